//! Issue 12 §2 through the real binary: results announced by signed webhooks reach the jobs
//! waiting for them (no polls), forged, duplicated, delayed and early deliveries change nothing,
//! polling is the fallback when webhooks are lost, a lost submit answer is recovered from the
//! task's webhook (no second bill), and the receiver refuses to start without a secret.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use claid_hotfolder::emulator::{Latency, Scenario, WebhookDigest};

use crate::support::{TestEnv, free_port, png, static_images, wait_until};

const SECRET: &str = "a-shared-secret-for-the-tests-only";
const DEADLINE: Duration = Duration::from_secs(90);

/// A scenario announcing results to the daemon's receiver on `port`.
fn announcing(port: u16) -> Scenario {
    Scenario::default()
        .webhook_url(format!("http://127.0.0.1:{port}/webhooks/claid"))
        .webhook_secret(SECRET)
}

/// The config section for the receiver on `port`, with the secret in a private file.
fn webhook_section(env: &TestEnv, port: u16, fallback: &str) -> String {
    let secret: PathBuf = env.dir.path().join("webhook-secret");
    std::fs::write(&secret, format!("{SECRET}\n")).expect("secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("mode");
    format!(
        "webhook:\n  listen: 127.0.0.1:{port}\n  secret_file: {}\n  poll_fallback: {fallback}\n",
        secret.display()
    )
}

fn manifest(n: usize, prefix: &str) -> String {
    let mut text = String::from("images:\n");
    for i in 0..n {
        text.push_str(&format!(
            "  - input: storage://demo/{prefix}{i}-64x48.png\n"
        ));
    }
    text
}

/// The doubts a report's rows count, in all.
fn in_doubt_of(report: &serde_json::Value) -> u64 {
    report["jobs"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["in_doubt"].as_u64().unwrap_or(0))
        .sum()
}

fn all_done(env: &TestEnv, n: usize) {
    let report = env.report("m");
    let rows = report["jobs"].as_array().expect("rows");
    assert_eq!(rows.len(), n);
    assert!(
        rows.iter().all(|r| r["status"] == "done"),
        "every image done: {report:#}"
    );
}

/// Webhooks (some duplicated, some forged, some delayed, in hex or base64) deliver every
/// result: nothing is polled, nothing billed twice, no forged one accepted.
#[tokio::test(flavor = "multi_thread")]
async fn issue12_signed_webhooks_deliver_results_without_polls_whatever_their_faults() {
    let port = free_port();
    let env = TestEnv::new(
        announcing(port)
            .webhook_digest(WebhookDigest::Base64)
            .webhook_duplicate_share(0.3)
            .webhook_forged_share(0.3)
            .webhook_delay(0.3, Duration::from_millis(400))
            .latency(Latency::Fixed(Duration::from_millis(300)))
            .seed(3),
    )
    .await;
    env.drop_file("m.yaml", manifest(12, "w").as_bytes());
    let config = env.config("", &webhook_section(&env, port, "2m"));
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    all_done(&env, 12);
    let stats = env.stats();
    assert_eq!(stats.polls, 0, "results came by webhook, none was polled");
    assert_eq!(stats.duplicate_submits, 0);
    assert!(stats.webhooks_forged > 0, "forged deliveries were sent");
    assert_eq!(stats.webhooks_forged_accepted, 0, "and none was accepted");
    assert!(stats.webhooks_duplicated > 0);
}

/// A result announced before the submit's answer was recorded is kept, not lost.
#[tokio::test(flavor = "multi_thread")]
async fn issue12_a_webhook_that_comes_before_the_submit_answer_is_not_lost() {
    let port = free_port();
    let env = TestEnv::new(
        announcing(port)
            .latency(Latency::Fixed(Duration::ZERO))
            .submit_response_delay(Duration::from_millis(500)),
    )
    .await;
    env.drop_file("m.yaml", manifest(4, "e").as_bytes());
    let config = env.config("", &webhook_section(&env, port, "2m"));
    let (code, stderr) = tokio::time::timeout(DEADLINE, env.run_once(&config))
        .await
        .expect("ends well before the poll fallback");
    assert_eq!(code, 0, "{stderr}");
    all_done(&env, 4);
    assert_eq!(env.stats().polls, 0, "the early webhooks were used");
}

/// With every webhook lost, polling takes over once they are overdue, at the latest after
/// `poll_fallback`: nothing is lost.
#[tokio::test(flavor = "multi_thread")]
async fn issue12_when_every_webhook_is_lost_polls_take_over() {
    let port = free_port();
    let env = TestEnv::new(announcing(port).webhook_drop_share(1.0)).await;
    env.drop_file("m.yaml", manifest(5, "l").as_bytes());
    let config = env.config("", &webhook_section(&env, port, "1s"));
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    all_done(&env, 5);
    let stats = env.stats();
    assert!(stats.polls >= 5, "every task was polled: {}", stats.polls);
    assert_eq!(stats.webhooks_sent, 0);
}

/// The canary's webhook lost: its poll finds it ended with no webhook heard yet, so webhooks
/// are unproven and the next batch's wait follows the poll schedule. That batch is still
/// watched: its webhook, which comes, gives its results without a poll (unwatched, it was
/// kept and the batch polled all the same).
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_sent_while_webhooks_are_unproven_takes_its_webhook_without_a_poll() {
    let port = free_port();
    let (statics, text) = static_images(10, "u");
    let env = TestEnv::new(
        announcing(port)
            .static_dir(statics.path())
            .latency(Latency::Fixed(Duration::from_secs(1)))
            .webhook_drop_nth(1),
    )
    .await;
    let text = env.static_urls(&text);
    env.drop_file("m.yaml", text.as_bytes());
    let config = env.config("", &webhook_section(&env, port, "60s"));
    // Polls no sooner than 3 s after a submit: a batch of 1 s is then polled only if its
    // webhook is not taken.
    let text = std::fs::read_to_string(&config).expect("config");
    let slower = text.replace(
        "poll: { min: 50ms, max: 500ms }",
        "poll: { min: 3s, max: 5s }",
    );
    assert_ne!(text, slower, "the test config's poll line");
    std::fs::write(&config, slower).expect("config");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    all_done(&env, 10);
    let stats = env.stats();
    assert!(stats.batch_submits >= 2, "the canary and more: {stats:?}");
    assert_eq!(
        stats.batch_polls, 1,
        "the canary's only: the batches after it took their webhooks: {stderr}"
    );
    assert_eq!(stats.duplicate_submits, 0);
}

/// One batch's announcement lost while a twin of its size is announced: the lost one is
/// polled once overdue by what its twin took, not after a wait fixed at its submit (a batch of
/// 64 whose twin ended in 3 s waited two minutes for its lost webhook; the issue asks that a
/// lost webhook "never leave a two-minute tail").
#[tokio::test(flavor = "multi_thread")]
async fn issue12_a_lost_batch_webhook_is_polled_by_what_its_twins_took() {
    let port = free_port();
    let (statics, text) = static_images(130, "t");
    let env = TestEnv::new(
        announcing(port)
            .static_dir(statics.path())
            .latency(Latency::Fixed(Duration::from_millis(500)))
            .batch_parallelism(64)
            // The canary's, then the first of the two batches of 32 to end.
            .webhook_drop_nth(3),
    )
    .await;
    let text = env.static_urls(&text);
    env.drop_file("m.yaml", text.as_bytes());
    let config = env.config("max_in_flight: 256", &webhook_section(&env, port, "2m"));
    // Batches of 32 and 64 that take about half a second: the wait fixed at the submit (twice
    // the canary's time for each image of the batch, one after the other) held this run for
    // 34 s; overdue by its twin's time it ends in a few.
    let (code, stderr) = tokio::time::timeout(Duration::from_secs(20), env.run_once(&config))
        .await
        .expect("ends long before a wait fixed at the submit");
    assert_eq!(code, 0, "{stderr}");
    all_done(&env, 130);
    let stats = env.stats();
    assert_eq!(stats.webhooks_dropped, 1);
    assert!(
        stats.batch_polls >= 1,
        "the batch whose webhook was lost was polled"
    );
    assert_eq!(stats.duplicate_submits, 0);
}

/// Webhooks that stop after the canary's: the first round's batch, of a size no batch has
/// ended at, is polled at a third of `poll_fallback` (the canary's pace said it could take
/// minutes, and it waited for the whole fallback: a two-minute tail by default).
#[tokio::test(flavor = "multi_thread")]
async fn issue12_webhooks_that_stop_after_the_canary_do_not_hold_the_first_round_for_the_fallback()
{
    let port = free_port();
    let (statics, text) = static_images(66, "s");
    let env = TestEnv::new(
        announcing(port)
            .static_dir(statics.path())
            .latency(Latency::Fixed(Duration::from_millis(3000)))
            .batch_parallelism(64)
            .webhook_drop_from(2),
    )
    .await;
    let text = env.static_urls(&text);
    env.drop_file("m.yaml", text.as_bytes());
    let config = env.config("max_in_flight: 256", &webhook_section(&env, port, "90s"));
    // The canary (3 s), then one batch of 64 that takes 3 s: polled after 30 s, not 90.
    let (code, stderr) = tokio::time::timeout(Duration::from_secs(70), env.run_once(&config))
        .await
        .expect("ends well before the first round's fallback");
    assert_eq!(code, 0, "{stderr}");
    all_done(&env, 66);
    let stats = env.stats();
    assert_eq!(stats.webhooks_sent, 1, "the canary's only");
    assert!(stats.batch_polls >= 1, "the first round was polled");
    assert_eq!(stats.duplicate_submits, 0);
}

/// A batch whose webhook is lost (the second one here) is polled once it is overdue; the
/// batches sent after that are polled on the schedule, their webhooks still taken when they
/// come first, so a lost webhook no longer holds each later batch until its own is overdue.
/// One lost webhook is no stop: no "Webhooks stopped coming". Every image done, none billed
/// twice.
#[tokio::test(flavor = "multi_thread")]
async fn issue12_batches_after_a_lost_webhook_are_polled_on_the_schedule() {
    let port = free_port();
    let (statics, text) = static_images(200, "l");
    let env = TestEnv::new(
        announcing(port)
            .static_dir(statics.path())
            .latency(Latency::Fixed(Duration::from_millis(2000)))
            .batch_parallelism(64)
            .webhook_drop_nth(2),
    )
    .await;
    let text = env.static_urls(&text);
    env.drop_file("m.yaml", text.as_bytes());
    let config = env.config("max_in_flight: 64", &webhook_section(&env, port, "9s"));
    let (code, stderr) = env
        .run_once_with(
            &config,
            &[("RUST_LOG", "info,claid_hotfolder::pipeline::batch=debug")],
            &[],
        )
        .await;
    assert_eq!(code, 0, "{stderr}");
    all_done(&env, 200);
    assert!(
        stderr.contains("Webhooks of recent batches were lost; this one is polled on the schedule"),
        "{stderr}"
    );
    assert!(!stderr.contains("Webhooks stopped coming"), "{stderr}");
    let stats = env.stats();
    assert!(stats.batch_polls >= 1, "the lost one was polled");
    assert_eq!(stats.duplicate_submits, 0);
}

/// A submit whose answer was lost (the task exists at Claid) adopts the task its webhook
/// announces: no second submit, nothing held; the wait for it is told as it begins.
#[tokio::test(flavor = "multi_thread")]
async fn issue12_a_lost_submit_answer_is_recovered_from_the_webhook_without_a_second_bill() {
    let port = free_port();
    let env = TestEnv::new(
        announcing(port)
            .drop_share(0.5)
            .latency(Latency::Fixed(Duration::from_millis(200)))
            .seed(9),
    )
    .await;
    env.drop_file("m.yaml", manifest(10, "d").as_bytes());
    let config = env.config("", &webhook_section(&env, port, "10s"));
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    all_done(&env, 10);
    let stats = env.stats();
    assert!(stats.dropped_responses > 0, "some submit answers were lost");
    assert_eq!(
        stats.duplicate_submits, 0,
        "no image billed twice: {:?}",
        stats.submits_by_key
    );
    assert!(
        stderr.contains("recovered from its webhook"),
        "the lost answers were recovered: {stderr}"
    );
    // The wait for the webhook is told when it begins, not only at its end (it may last
    // `webhook.poll_fallback`, two minutes by default).
    assert!(
        stderr.contains("submit was lost; waiting for a webhook naming the task"),
        "{stderr}"
    );
}

/// The canary batch's submit answer is lost and so is its webhook: while it waits (up to
/// `webhook.poll_fallback`) for a webhook that would save a second bill, the next batch goes
/// as a canary in its place and the drop flows on, and a free probe shows the API answers, so
/// `run --once` does not take the wait for an outage. (Nothing was sent for the whole wait,
/// no call was made, and the run ended 69 "unreachable" when `unreachable_timeout` was not
/// longer than the wait.)
#[tokio::test(flavor = "multi_thread")]
async fn issue12_a_lost_canary_answer_holds_neither_the_drop_nor_counts_as_an_outage() {
    let port = free_port();
    let (statics, text) = static_images(12, "c");
    let env = TestEnv::new(
        announcing(port)
            .static_dir(statics.path())
            .drop_first(1)
            .webhook_drop_nth(1)
            .latency(Latency::Fixed(Duration::from_millis(300))),
    )
    .await;
    let text = env.static_urls(&text);
    env.drop_file("m.yaml", text.as_bytes());
    let config = env.config(
        "unreachable_timeout: 6s",
        &webhook_section(&env, port, "10s"),
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    all_done(&env, 12);
    assert!(
        stderr.contains("the next batch is a canary in its place"),
        "{stderr}"
    );
    let stats = env.stats();
    assert_eq!(stats.dropped_responses, 1, "{stats:?}");
    let in_doubt = in_doubt_of(&env.report("m"));
    assert!(
        stats.duplicate_submits <= in_doubt,
        "billed twice only as counted in doubt: {stats:?}"
    );
}

/// An unknown task's webhook is acknowledged (2xx) and counted; a forged one is refused.
#[tokio::test(flavor = "multi_thread")]
async fn issue12_an_unknown_tasks_webhook_is_acknowledged_and_a_forged_one_refused() {
    let port = free_port();
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", &webhook_section(&env, port, "2m"));
    let mut daemon = env.spawn_daemon(&config, 0);
    wait_until("ready", DEADLINE, || env.daemon_log(0).contains("Ready")).await;
    let body = serde_json::json!({
        "id": 987654, "status": "DONE", "result_url": "http://x/v1/image/edit/async/987654",
        "request": {"input": "https://nowhere/x.jpg", "operations": {}}, "errors": [], "result": {}
    })
    .to_string();
    let secret = claid_hotfolder::webhook::Secret::new(SECRET).expect("secret");
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/webhooks/claid");
    let good = http
        .post(&url)
        .header(
            "x-claid-hmac-sha256",
            claid_hotfolder::webhook::sign_hex(&secret, body.as_bytes()),
        )
        .body(body.clone())
        .send()
        .await
        .expect("answered");
    assert!(good.status().is_success(), "{}", good.status());
    let forged = http
        .post(&url)
        .header("x-claid-hmac-sha256", "00".repeat(32))
        .body(body)
        .send()
        .await
        .expect("answered");
    assert_eq!(forged.status().as_u16(), 401);
    // The answer goes out once the update is handed on; the pipeline counts an unknown task
    // when it takes the update, a moment later.
    let metrics = || async {
        let answer = claid_hotfolder::admin::request(&env.socket(), "GET", "/metrics", None)
            .await
            .expect("metrics");
        String::from_utf8_lossy(&answer.1).into_owned()
    };
    crate::support::wait_until_async("the unknown task counted", DEADLINE, || async {
        metrics()
            .await
            .contains("claid_hotfolder_webhooks_total{outcome=\"unknown_task\"} 1")
    })
    .await;
    let text = metrics().await;
    assert!(
        text.contains("claid_hotfolder_webhooks_total{outcome=\"unknown_task\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("claid_hotfolder_webhooks_total{outcome=\"rejected_signature\"} 1"),
        "{text}"
    );
    crate::support::stop(&mut daemon).await;
    // Counted as no job's, it is not kept in the store for a day (another client's
    // announcements on the same Claid account filled the store and each start's memory).
    let store = claid_hotfolder::store::Store::open(&env.state).expect("store");
    let kept = store
        .kept_announcements(Duration::from_secs(24 * 3600))
        .await
        .expect("kept");
    assert!(kept.is_empty(), "{} kept", kept.len());
}

/// The daemon's own announcements are never counted as unknown tasks: neither those that
/// come before their submit's answer (kept, then taken by their job) nor those that come after
/// a poll ended their job. (Each was counted: `unknown_task` read 8 for a drop of 8 images.)
/// An unknown task's announcement, sent after them, is the only one counted.
#[tokio::test(flavor = "multi_thread")]
async fn the_daemons_own_early_and_late_announcements_are_not_counted_as_unknown_tasks() {
    let port = free_port();
    let env = TestEnv::new(
        announcing(port)
            .latency(Latency::Fixed(Duration::ZERO))
            .submit_response_delay(Duration::from_millis(400))
            .webhook_delay(0.5, Duration::from_secs(3))
            .seed(12),
    )
    .await;
    let n = 8;
    let config = env.config(
        "batch: { max_images: 1 }",
        &webhook_section(&env, port, "1s"),
    );
    let mut daemon = env.spawn_daemon(&config, 0);
    wait_until("ready", DEADLINE, || env.daemon_log(0).contains("Ready")).await;
    env.drop_file("m.yaml", manifest(n, "o").as_bytes());
    wait_until("the report", DEADLINE, || {
        env.outbox.join("m.report.json").exists()
    })
    .await;
    all_done(&env, n);
    let metrics = || async {
        let answer = claid_hotfolder::admin::request(&env.socket(), "GET", "/metrics", None)
            .await
            .expect("metrics");
        String::from_utf8_lossy(&answer.1).into_owned()
    };
    let verified = |n: usize| format!("claid_hotfolder_webhooks_total{{outcome=\"verified\"}} {n}");
    crate::support::wait_until_async("every announcement verified", DEADLINE, || async {
        metrics().await.contains(&verified(n))
    })
    .await;
    let stats = env.stats();
    assert!(stats.webhooks_delayed > 0, "some came late");
    assert!(stats.polls > 0, "the late ones' tasks were polled first");
    // An unknown task's announcement, decided after the daemon's own (in the order they came).
    let body = serde_json::json!({
        "id": 987654, "status": "DONE", "result_url": "http://x/v1/image/edit/async/987654",
        "request": {"input": "https://nowhere/x.jpg", "operations": {}}, "errors": [], "result": {}
    })
    .to_string();
    let secret = claid_hotfolder::webhook::Secret::new(SECRET).expect("secret");
    let answer = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/webhooks/claid"))
        .header(
            "x-claid-hmac-sha256",
            claid_hotfolder::webhook::sign_hex(&secret, body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .expect("answered");
    assert!(answer.status().is_success(), "{}", answer.status());
    crate::support::wait_until_async("the unknown task counted", DEADLINE, || async {
        metrics().await.contains(&verified(n + 1))
            && !metrics()
                .await
                .contains("claid_hotfolder_webhooks_total{outcome=\"unknown_task\"} 0")
    })
    .await;
    let text = metrics().await;
    assert!(
        text.contains("claid_hotfolder_webhooks_total{outcome=\"unknown_task\"} 1"),
        "only the unknown task's: {text}"
    );
    // Every verified one ends in exactly one outcome: those that came before their submit's
    // answer were verified and counted in none.
    let outcome = |name: &str| -> u64 {
        let prefix = format!("claid_hotfolder_webhooks_total{{outcome=\"{name}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name}: {text}"))
    };
    let ended: u64 = [
        "handed",
        "adopted",
        "duplicate",
        "unknown_task",
        "not_final",
        "rejected_body",
        "sink_busy",
    ]
    .iter()
    .map(|name| outcome(name))
    .sum();
    assert_eq!(ended, outcome("verified"), "{text}");
    crate::support::stop(&mut daemon).await;
}

/// A secret rotated in `webhook.secret_file` (the same file, another secret in it) is named by
/// a SIGHUP as not in force until a restart, like a rotated API key: the receiver keeps
/// verifying with the secret it started with. (The reload said "Reloaded" without a word, and
/// every webhook signed with the new secret was refused 401.)
#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_webhook_secret_is_named_by_a_reload_as_waiting_for_a_restart() {
    let port = free_port();
    let env = TestEnv::new(announcing(port)).await;
    let config = env.config("", &webhook_section(&env, port, "1m"));
    let mut daemon = env.spawn_daemon(&config, 0);
    wait_until("ready", DEADLINE, || env.daemon_log(0).contains("Ready")).await;
    let rotated = "a-rotated-secret-for-the-tests-only-000000";
    std::fs::write(
        env.dir.path().join("webhook-secret"),
        format!("{rotated}\n"),
    )
    .expect("rotated");
    crate::support::signal(&daemon, "-HUP");
    wait_until("the rotated secret named", DEADLINE, || {
        env.daemon_log(0).lines().any(|l| {
            l.contains("NOT in force")
                && l.contains("webhook.secret_file (the secret in it changed)")
        })
    })
    .await;
    assert!(!env.daemon_log(0).contains(rotated));
    crate::support::stop(&mut daemon).await;
}

/// The receiver does not start without a secret: a configuration error naming the key.
#[tokio::test(flavor = "multi_thread")]
async fn issue12_the_receiver_refuses_to_start_without_a_secret() {
    let env = TestEnv::new(Scenario::default()).await;
    let port = free_port();
    let config = env.config("", &format!("webhook:\n  listen: 127.0.0.1:{port}\n"));
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("webhook.secret_file"), "{stderr}");
}

/// SIGKILL while submits are on the wire (Claid has the tasks, the daemon never read their
/// answers): the restarted daemon waits for the tasks' webhooks and adopts them instead of
/// resubmitting; every image ends done and none is billed twice.
#[tokio::test(flavor = "multi_thread")]
async fn issue12_a_submit_cut_short_by_sigkill_is_adopted_from_its_webhook_after_restart() {
    let port = free_port();
    let env = TestEnv::new(
        announcing(port)
            .latency(Latency::Fixed(Duration::ZERO))
            .submit_response_delay(Duration::from_secs(30))
            .webhook_delay(1.0, Duration::from_secs(4)),
    )
    .await;
    env.drop_file("m.yaml", manifest(3, "k").as_bytes());
    let config = env.config(
        "batch: { max_images: 1 }",
        &webhook_section(&env, port, "60s"),
    );
    let mut daemon = env.spawn_daemon(&config, 0);
    wait_until("three submits received", DEADLINE, || {
        env.stats().submits >= 3
    })
    .await;
    daemon.start_kill().expect("SIGKILL");
    let status = daemon.wait().await.expect("wait");
    assert_eq!(status.code(), None, "killed, not exited");
    assert_eq!(
        env.stats().webhooks_sent,
        0,
        "no webhook went out before the kill"
    );

    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    all_done(&env, 3);
    let stats = env.stats();
    assert_eq!(
        stats.duplicate_submits, 0,
        "no image billed twice: {:?}",
        stats.submits_by_key
    );
    assert!(
        stderr.contains("awaiting_webhook=3"),
        "the restart counted the submits cut short: {stderr}"
    );
    assert!(
        stderr.contains("recovered from its webhook"),
        "they were adopted: {stderr}"
    );
}

/// The same, against a Claid that echoes each request as its model holds it (every documented
/// default filled in, the other fields `null`, `"png"` as `{"type": "png", "compression":
/// "optimal"}`): the echo is still the request sent, and the lost submits are adopted, single
/// and batched. (The echo was compared field for field: every image was billed again.)
#[tokio::test(flavor = "multi_thread")]
async fn issue12_lost_submits_are_adopted_from_webhooks_that_echo_the_schemas_defaults() {
    for batch in [1, 100] {
        let port = free_port();
        let env = TestEnv::new(
            announcing(port)
                .latency(Latency::Fixed(Duration::ZERO))
                .submit_response_delay(Duration::from_secs(30))
                .webhook_delay(1.0, Duration::from_secs(4))
                .echo_defaults(true),
        )
        .await;
        let mut text = String::from(
            "operations: { resizing: { width: 32 } }\noutput: { format: png }\nimages:\n",
        );
        for i in 0..3 {
            text.push_str(&format!("  - storage://demo/d{i}-64x48.png\n"));
        }
        env.drop_file("m.yaml", text.as_bytes());
        let config = env.config(
            &format!("batch: {{ max_images: {batch} }}"),
            &webhook_section(&env, port, "60s"),
        );
        let mut daemon = env.spawn_daemon(&config, 0);
        wait_until("the submits received", DEADLINE, || {
            let stats = env.stats();
            stats.submits + stats.batch_images >= 3
        })
        .await;
        daemon.start_kill().expect("SIGKILL");
        let status = daemon.wait().await.expect("wait");
        assert_eq!(status.code(), None, "killed, not exited");
        assert_eq!(env.stats().webhooks_sent, 0, "no webhook before the kill");

        let (code, stderr) = env.run_once(&config).await;
        assert_eq!(code, 0, "batch {batch}: {stderr}");
        all_done(&env, 3);
        let stats = env.stats();
        assert_eq!(
            stats.submits + stats.batch_images,
            3,
            "batch {batch}: no image billed twice: {stats:?}"
        );
        assert!(
            stderr.contains("recovered from"),
            "batch {batch}: they were adopted: {stderr}"
        );
    }
}

/// While jobs a SIGKILL caught mid-submit wait for their webhooks after the restart, `status`
/// says so (`daemon.awaiting_webhook`), and the count falls to 0 once they are adopted.
#[tokio::test(flavor = "multi_thread")]
async fn issue12_status_shows_the_jobs_waiting_for_a_webhook_to_adopt_their_task() {
    let port = free_port();
    let env = TestEnv::new(
        announcing(port)
            .latency(Latency::Fixed(Duration::ZERO))
            .submit_response_delay(Duration::from_secs(30))
            .webhook_delay(1.0, Duration::from_secs(15)),
    )
    .await;
    env.drop_file("m.yaml", manifest(2, "w").as_bytes());
    let config = env.config(
        "batch: { max_images: 1 }",
        &webhook_section(&env, port, "60s"),
    );
    let mut daemon = env.spawn_daemon(&config, 0);
    wait_until("two submits received", DEADLINE, || {
        env.stats().submits >= 2
    })
    .await;
    daemon.start_kill().expect("SIGKILL");
    daemon.wait().await.expect("wait");
    let status = || async {
        let (code, out, err) = crate::support::cli(&[
            "status",
            "--json",
            "--config",
            config.to_str().expect("utf-8"),
        ])
        .await;
        // 75 while the restarted daemon opens its admin socket.
        assert!(code == 0 || code == 75, "{out}{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap_or_default()
    };
    let mut daemon = env.spawn_daemon(&config, 1);
    crate::support::wait_until_async("status counts the two waiting jobs", DEADLINE, || async {
        status().await["daemon"]["awaiting_webhook"] == 2
    })
    .await;
    wait_until("adopted and done", DEADLINE, || {
        env.outbox.join("m.report.json").is_file()
    })
    .await;
    assert_eq!(status().await["daemon"]["awaiting_webhook"], 0);
    crate::support::stop(&mut daemon).await;
    all_done(&env, 2);
    assert_eq!(env.stats().duplicate_submits, 0);
}

/// A batch whose submit answer a SIGKILL cut short is adopted from its webhook after the
/// restart: its jobs were marked submitting together, and the webhook's echoed request lists
/// their inputs; nothing is submitted (or billed) again.
#[tokio::test(flavor = "multi_thread")]
async fn issue12_a_batch_submit_cut_short_by_sigkill_is_adopted_from_its_webhook_after_restart() {
    let port = free_port();
    // Two `http://` images the emulator serves: the first batch (the canary) holds both.
    let images = tempfile::tempdir().expect("static dir");
    for name in ["b0.png", "b1.png"] {
        std::fs::write(images.path().join(name), png(64, 48)).expect("image");
    }
    let env = TestEnv::new(
        announcing(port)
            .static_dir(images.path())
            .latency(Latency::Fixed(Duration::ZERO))
            .submit_response_delay(Duration::from_secs(30))
            .webhook_delay(1.0, Duration::from_secs(4)),
    )
    .await;
    let base = format!("http://{}/_static", env.emulator.addr());
    env.drop_file(
        "m.yaml",
        format!("images:\n  - input: {base}/b0.png\n  - input: {base}/b1.png\n").as_bytes(),
    );
    let config = env.config("", &webhook_section(&env, port, "60s"));
    let mut daemon = env.spawn_daemon(&config, 0);
    wait_until("the batch received", DEADLINE, || {
        env.stats().batch_submits >= 1
    })
    .await;
    daemon.start_kill().expect("SIGKILL");
    let status = daemon.wait().await.expect("wait");
    assert_eq!(status.code(), None, "killed, not exited");
    assert_eq!(
        env.stats().webhooks_sent,
        0,
        "no webhook went out before the kill"
    );

    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    all_done(&env, 2);
    let stats = env.stats();
    assert_eq!(
        (stats.batch_submits, stats.batch_images, stats.submits),
        (1, 2, 0),
        "one batch of two, never sent again"
    );
    assert_eq!(
        stats.duplicate_submits, 0,
        "no image billed twice: {:?}",
        stats.submits_by_key
    );
    assert!(
        stderr.contains("awaiting_webhook=2"),
        "the restart counted the submits cut short: {stderr}"
    );
    assert!(
        stderr.contains("batch submit cut short by a crash was recovered"),
        "the batch was adopted: {stderr}"
    );
    let report = env.report("m");
    assert!(
        report["jobs"]
            .as_array()
            .expect("rows")
            .iter()
            .all(|r| r["batch_id"].as_u64().is_some()),
        "each row names the batch: {report:#}"
    );
}

/// The webhook came (and was answered) while the submit answer was still on its way, then the
/// daemon was SIGKILLed: Claid announces a task once, so the webhook must have been kept
/// durably; the restart hands it to the jobs caught mid-submit (its log says so), and nothing
/// is submitted (or billed) again. A batch, then one image alone.
#[tokio::test(flavor = "multi_thread")]
async fn issue12_a_webhook_answered_before_a_sigkill_is_kept_for_the_restart() {
    for batch in [true, false] {
        let port = free_port();
        let images = tempfile::tempdir().expect("static dir");
        for name in ["k0.png", "k1.png"] {
            std::fs::write(images.path().join(name), png(64, 48)).expect("image");
        }
        let env = TestEnv::new(
            announcing(port)
                .static_dir(images.path())
                .latency(Latency::Fixed(Duration::ZERO))
                .submit_response_delay(Duration::from_secs(60)),
        )
        .await;
        let base = format!("http://{}/_static", env.emulator.addr());
        let text = if batch {
            format!("images:\n  - input: {base}/k0.png\n  - input: {base}/k1.png\n")
        } else {
            format!("images:\n  - input: {base}/k0.png\n")
        };
        env.drop_file("m.yaml", text.as_bytes());
        let section = webhook_section(&env, port, "30s");
        let api = if batch {
            ""
        } else {
            "batch: { max_images: 1 }"
        };
        let config = env.config(api, &section);
        let mut daemon = env.spawn_daemon(&config, 0);
        wait_until("the webhook answered 2xx", DEADLINE, || {
            env.stats().webhooks_sent >= 1
        })
        .await;
        daemon.start_kill().expect("SIGKILL");
        let status = daemon.wait().await.expect("wait");
        assert_eq!(status.code(), None, "killed, not exited");
        if !batch {
            // Down for 16 minutes (a reboot, an upgrade): the kept webhook still counts.
            let store = claid_hotfolder::store::Store::open(&env.state).expect("store");
            store
                .age_kept_announcements(Duration::from_secs(16 * 60))
                .await
                .expect("aged");
        }

        let (code, stderr) = env.run_once(&config).await;
        assert_eq!(code, 0, "batch {batch}: {stderr}");
        all_done(&env, if batch { 2 } else { 1 });
        let stats = env.stats();
        assert_eq!(
            stats.duplicate_submits, 0,
            "batch {batch}: no image billed twice: {:?}",
            stats.submits_by_key
        );
        assert_eq!(
            stats.batch_submits + stats.submits,
            1,
            "batch {batch}: one submit, never sent again"
        );
        assert!(
            stderr.contains("Webhooks kept in the store by an earlier run"),
            "batch {batch}: {stderr}"
        );
    }
}

/// A lost submit answer whose task is announced when accepted (an ACCEPTED webhook, before
/// any result) is adopted then: the job waits for the task's end instead of resubmitting when
/// its wait (`poll_fallback`, shorter than the task here) runs out, so nothing is billed twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_submit_is_adopted_from_its_accepted_webhook_before_the_task_ends() {
    let port = free_port();
    let env = TestEnv::new(
        announcing(port)
            .webhook_on_accept(true)
            .drop_share(1.0)
            .latency(Latency::Fixed(Duration::from_secs(6))),
    )
    .await;
    env.drop_file("m.yaml", manifest(2, "acc").as_bytes());
    let config = env.config(
        "batch: { max_images: 1 }",
        &webhook_section(&env, port, "2s"),
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    all_done(&env, 2);
    let stats = env.stats();
    assert_eq!(
        stats.duplicate_submits, 0,
        "no image billed twice: {stderr}"
    );
    assert_eq!(stats.submits, 2);
}

/// Jobs held in doubt because their submit answers were lost and the webhooks came later
/// than `poll_fallback`: the late webhook is adopted by the held jobs (alone, then in a batch),
/// which are delivered without a second submit, so `replay --in-doubt` has nothing left to
/// bill twice; the run's report is written again with them done, their doubt resolved
/// (`in_doubt` 0: nothing was billed twice).
#[tokio::test(flavor = "multi_thread")]
async fn issue12_a_webhook_later_than_the_wait_is_adopted_by_the_jobs_held_in_doubt() {
    for (n, api) in [
        (2, "batch: { max_images: 1 }"),
        (3, "batch: { max_images: 100 }"),
    ] {
        let port = free_port();
        let env = TestEnv::new(
            announcing(port)
                .drop_share(1.0)
                .latency(Latency::Fixed(Duration::from_millis(200)))
                .webhook_delay(1.0, Duration::from_secs(6)),
        )
        .await;
        env.drop_file("m.yaml", manifest(n, "h").as_bytes());
        let config = env.config(
            api,
            &format!("{}in_doubt: hold\n", webhook_section(&env, port, "2s")),
        );
        let mut daemon = env.spawn_daemon(&config, 0);
        wait_until("the jobs are held in doubt", DEADLINE, || {
            env.daemon_log(0).contains("held for `replay --in-doubt`")
        })
        .await;
        wait_until(
            "the late webhooks are adopted and the images delivered",
            DEADLINE,
            || {
                std::fs::read(env.outbox.join("m.report.json"))
                    .ok()
                    .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
                    .is_some_and(|report| {
                        report["jobs"]
                            .as_array()
                            .is_some_and(|rows| rows.iter().all(|r| r["status"] == "done"))
                    })
            },
        )
        .await;
        crate::support::stop(&mut daemon).await;
        all_done(&env, n);
        // The doubt is resolved: the adopted task was the one billed, nothing was sent twice.
        let report = env.report("m");
        assert_eq!(report["in_doubt"], 0, "{api}: {report:#}");
        for row in report["jobs"].as_array().expect("rows") {
            assert_eq!(row["in_doubt"], 0, "{api}: {row}");
        }
        let stats = env.stats();
        assert_eq!(stats.duplicate_submits, 0, "{api}: no image billed twice");
        assert_eq!(
            stats.submits + stats.batch_images,
            n as u64,
            "{api}: each image submitted once"
        );
        assert!(
            env.daemon_log(0)
                .contains("adopted by the jobs held in doubt"),
            "{api}: {}",
            env.daemon_log(0)
        );
    }
}

/// A receiver bound beyond loopback is allowed (the TLS proxy may run elsewhere) but named
/// once in a warning: it speaks plain HTTP.
#[tokio::test(flavor = "multi_thread")]
async fn issue12_a_receiver_listening_beyond_loopback_is_warned_about() {
    // A port found free on 127.0.0.1 may be taken by another test's listener before the
    // daemon binds it on every address: then the daemon stops at once, and another is tried.
    for attempt in 0.. {
        let port = free_port();
        let env = TestEnv::new(announcing(port)).await;
        let section = webhook_section(&env, port, "1m").replace("127.0.0.1:", "0.0.0.0:");
        let config = env.config("", &section);
        let mut daemon = env.spawn_daemon(&config, 0);
        let mut exited = false;
        wait_until("the receiver listens or the daemon stops", DEADLINE, || {
            exited = matches!(daemon.try_wait(), Ok(Some(_)));
            exited || env.daemon_log(0).contains("Webhook receiver listening")
        })
        .await;
        if exited && attempt < 3 {
            continue;
        }
        assert!(!exited, "{}", env.daemon_log(0));
        crate::support::stop(&mut daemon).await;
        assert!(
            env.daemon_log(0).contains("listens beyond this machine"),
            "{}",
            env.daemon_log(0)
        );
        break;
    }
}

/// Webhooks configured but never arriving (a wrong secret in Claid's dashboard): once polls
/// have found two tasks ended with no webhook heard, the daemon says so and polls as without
/// webhooks (each task waited `poll.max`, at least 10 s, before its first poll); every image
/// is delivered.
#[tokio::test(flavor = "multi_thread")]
async fn issue12_webhooks_that_never_arrive_are_noticed_and_polling_takes_over() {
    let port = free_port();
    let env = TestEnv::new(
        announcing(port)
            .webhook_drop_share(1.0)
            .latency(Latency::Fixed(Duration::from_millis(300))),
    )
    .await;
    env.drop_file("m.yaml", manifest(6, "s").as_bytes());
    let config = env.config(
        "batch: { max_images: 1 }\nmax_in_flight: 2",
        &webhook_section(&env, port, "2m"),
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    all_done(&env, 6);
    assert!(
        stderr.contains("No webhook has come while polls found tasks ended"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("No webhook has come").count(),
        1,
        "said once"
    );
    assert_eq!(env.stats().duplicate_submits, 0);
}

/// A signed announcement that a task (or a batch) is done but carries no result (only its id,
/// status and `result_url`) makes the daemon poll for the result instead of failing the job:
/// the image Claid made and billed is delivered.
#[tokio::test(flavor = "multi_thread")]
async fn an_announcement_without_its_result_makes_a_poll_not_a_failure() {
    for (api, kind, n) in [("batch: { max_images: 1 }", "async", 1), ("", "batch", 2)] {
        let port = free_port();
        let env = TestEnv::new(
            announcing(port)
                .webhook_drop_share(1.0)
                .latency(Latency::Fixed(Duration::from_secs(2))),
        )
        .await;
        let config = env.config(api, &webhook_section(&env, port, "2m"));
        let mut daemon = env.spawn_daemon(&config, 0);
        env.drop_file("m.yaml", manifest(n, "slim").as_bytes());
        let task_id = crate::support::wait_for("the task id is recorded", DEADLINE, async || {
            let answer = claid_hotfolder::admin::request(&env.socket(), "GET", "/jobs", None)
                .await
                .ok()?;
            let jobs: serde_json::Value = serde_json::from_slice(&answer.1).ok()?;
            jobs[0]["task_id"].as_u64()
        })
        .await;
        let body = serde_json::json!({
            "id": task_id,
            "status": "DONE",
            "result_url": format!("{}/image/edit/{kind}/{task_id}", env.emulator.base_url()),
        })
        .to_string();
        let secret = claid_hotfolder::webhook::Secret::new(SECRET).expect("secret");
        let answer = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}/webhooks/claid"))
            .header(
                "x-claid-hmac-sha256",
                claid_hotfolder::webhook::sign_hex(&secret, body.as_bytes()),
            )
            .body(body)
            .send()
            .await
            .expect("answered");
        assert!(answer.status().is_success(), "{kind}: {}", answer.status());
        wait_until("the report is written", DEADLINE, || {
            env.outbox.join("m.report.json").is_file()
        })
        .await;
        crate::support::stop(&mut daemon).await;
        all_done(&env, n);
        assert_eq!(
            env.stats().submits + env.stats().batch_images,
            n as u64,
            "{kind}: billed once"
        );
        // Polled on the schedule (`poll.max` 500 ms over a 2 s task), not in a tight loop
        // handing the same announcement back.
        assert!(
            env.stats().polls <= 30,
            "{kind}: {} polls",
            env.stats().polls
        );
    }
}

/// A job queued again after its lost submit (`replay --in-doubt` of a job held in doubt) is
/// still recognised, until it is sent again, by a webhook announcing the task that submit
/// created: it adopts that task instead of paying for a second one. The resubmit is kept
/// waiting meanwhile by a 402 (credits exhausted) so the announcement comes first.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_queued_again_after_a_lost_submit_adopts_a_late_announcement() {
    let port = free_port();
    let env = TestEnv::new(
        announcing(port)
            .drop_share(1.0)
            .webhook_drop_share(1.0)
            .latency(Latency::Fixed(Duration::from_millis(200))),
    )
    .await;
    env.drop_file("m.yaml", manifest(1, "q").as_bytes());
    let config = env.config(
        "batch: { max_images: 1 }",
        &format!("{}in_doubt: hold\n", webhook_section(&env, port, "1s")),
    );
    let cfg = config.to_str().unwrap();
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 2, "held in doubt: {stderr}");
    assert_eq!(env.stats().submits, 1);
    // The task the lost submit created, as Claid would announce it.
    let task = wait_for_task(&env, 1).await;
    let (code, out, err) = crate::support::cli(&["replay", "--in-doubt", "--config", cfg]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Requeued 1 job"), "{out}");

    env.emulator.control().set_credits_exhausted(true);
    let mut daemon = env.spawn_daemon(&config, 0);
    wait_until("the resubmit is refused with 402", DEADLINE, || {
        env.daemon_log(0).contains("402")
    })
    .await;
    let secret = claid_hotfolder::webhook::Secret::new(SECRET).expect("secret");
    let answer = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/webhooks/claid"))
        .header(
            "x-claid-hmac-sha256",
            claid_hotfolder::webhook::sign_hex(&secret, task.as_bytes()),
        )
        .body(task)
        .send()
        .await
        .expect("answered");
    assert!(answer.status().is_success(), "{}", answer.status());
    wait_until("the announcement is adopted", DEADLINE, || {
        env.daemon_log(0)
            .contains("adopted by the jobs held in doubt")
    })
    .await;
    env.emulator.control().set_credits_exhausted(false);
    wait_until("the image is delivered", DEADLINE, || {
        std::fs::read(env.outbox.join("m.report.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .is_some_and(|report| report["jobs"][0]["status"] == "done")
    })
    .await;
    crate::support::stop(&mut daemon).await;
    all_done(&env, 1);
    let stats = env.stats();
    assert_eq!(
        stats.submits, 1,
        "submitted once: {:?}",
        stats.submits_by_key
    );
    assert_eq!(stats.duplicate_submits, 0);
}

/// The result object of emulator task `id` once it is done (what its webhook would carry).
async fn wait_for_task(env: &TestEnv, id: u64) -> String {
    env.emulator_result_when_done(&format!("image/edit/async/{id}"), DEADLINE)
        .await
}

/// Tasks that ended while the daemon was down (SIGKILLed) had their webhooks sent to nobody:
/// the restart finds them ended by polling, which says nothing about the webhook setup. No
/// "check the webhook URL and secret" warning, and the images are delivered once.
#[tokio::test(flavor = "multi_thread")]
async fn tasks_that_ended_while_the_daemon_was_down_do_not_raise_the_webhook_warning() {
    let port = free_port();
    let env = TestEnv::new(announcing(port).latency(Latency::Fixed(Duration::from_secs(2)))).await;
    env.drop_file("m.yaml", manifest(3, "d").as_bytes());
    let config = env.config(
        "batch: { max_images: 1 }",
        &webhook_section(&env, port, "2m"),
    );
    let mut daemon = env.spawn_daemon(&config, 0);
    crate::support::wait_for("every task id is recorded", DEADLINE, async || {
        let answer = claid_hotfolder::admin::request(&env.socket(), "GET", "/jobs", None)
            .await
            .ok()?;
        let jobs: serde_json::Value = serde_json::from_slice(&answer.1).ok()?;
        let ids = jobs
            .as_array()?
            .iter()
            .filter(|j| j["task_id"].is_u64())
            .count();
        (ids == 3).then_some(())
    })
    .await;
    daemon.start_kill().expect("SIGKILL");
    daemon.wait().await.expect("wait");
    wait_until("the webhooks went to nobody", DEADLINE, || {
        env.stats().webhooks_failed >= 3
    })
    .await;
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    all_done(&env, 3);
    assert!(!stderr.contains("No webhook has come"), "{stderr}");
    assert_eq!(env.stats().duplicate_submits, 0);
}

/// Images of a run whose manifest is saved again while their lost submits still wait for a
/// webhook (`in_doubt: hold`): they are held during the drain, after the newer version was
/// seen, and end as superseded with the run (in doubt counted in its own report), instead of
/// waiting for a `replay` a replaced run never gets.
#[tokio::test(flavor = "multi_thread")]
async fn images_held_while_their_run_drains_end_superseded_with_it() {
    let (env, config, mut daemon) = saved_again_while_lost_submits_wait("in_doubt: hold\n").await;
    let cfg = config.to_str().unwrap();
    wait_until("the old version's report", DEADLINE, || {
        env.superseded_report("m").is_some()
    })
    .await;
    wait_until("v2's image is submitted", DEADLINE, || {
        env.stats().submits == 3
    })
    .await;
    let log = || env.daemon_log(0);
    wait_until("v2's image is held", DEADLINE, || {
        log().matches("held for `replay --in-doubt`").count() >= 3
            || log().contains("Run reported; jobs held in doubt")
    })
    .await;
    crate::support::stop(&mut daemon).await;
    let old: serde_json::Value = serde_json::from_slice(
        &std::fs::read(env.superseded_report("m").expect("report")).expect("read"),
    )
    .expect("JSON");
    let rows = old["jobs"].as_array().expect("rows");
    assert_eq!(rows.len(), 2);
    for row in rows {
        assert_eq!(row["status"], "superseded", "{old:#}");
        assert_eq!(row["in_doubt"], 1, "{row}");
    }
    let (_, out, err) =
        crate::support::cli(&["jobs", "--state", "in-doubt", "--config", cfg]).await;
    assert!(
        out.contains("v2-0") && out.ends_with("\n1 job\n"),
        "only v2's image is held: {out}{err}"
    );
}

/// A run whose manifest was saved again while its lost submits waited for their webhooks, then
/// SIGKILL: at the restart the run is draining, and its images caught mid-submit are queued
/// again when the wait for their webhooks ends (`in_doubt: resubmit`). They are cancelled as
/// superseded, so the run ends and the newer version is taken in (the submitter used to skip
/// them without cancelling them: the run stayed open until the next start).
#[tokio::test(flavor = "multi_thread")]
async fn a_draining_runs_images_queued_again_after_a_restart_let_it_end() {
    let (env, config, mut first) = saved_again_while_lost_submits_wait("").await;
    wait_until("v1 drains", DEADLINE, || {
        env.daemon_log(0)
            .contains("The manifest was saved again while it ran")
    })
    .await;
    first.start_kill().expect("SIGKILL");
    first.wait().await.expect("wait");
    assert!(env.superseded_report("m").is_none(), "v1 had not ended");
    let mut daemon = env.spawn_daemon(&config, 1);
    wait_until("v1 ends as superseded", DEADLINE, || {
        env.superseded_report("m").is_some()
    })
    .await;
    crate::support::stop(&mut daemon).await;
    let old: serde_json::Value = serde_json::from_slice(
        &std::fs::read(env.superseded_report("m").expect("report")).expect("read"),
    )
    .expect("JSON");
    let rows = old["jobs"].as_array().expect("rows");
    assert!(rows.iter().all(|r| r["status"] == "superseded"), "{old:#}");
}

/// A daemon (log 0) whose `m.yaml` of two images lost both submit answers and waits 3 s for
/// their webhooks (none comes), when `m.yaml` is saved again with one other image. `extra` is
/// more top-level config.
async fn saved_again_while_lost_submits_wait(
    extra: &str,
) -> (TestEnv, PathBuf, tokio::process::Child) {
    let port = free_port();
    let env = TestEnv::new(
        announcing(port)
            .drop_share(1.0)
            .webhook_drop_share(1.0)
            .latency(Latency::Fixed(Duration::from_millis(50))),
    )
    .await;
    let config = env.config(
        "batch: { max_images: 1 }",
        &format!("{}{extra}", webhook_section(&env, port, "3s")),
    );
    let daemon = env.spawn_daemon(&config, 0);
    env.drop_file("m.yaml", manifest(2, "v1-").as_bytes());
    wait_until("both submits of v1 are lost", DEADLINE, || {
        env.stats().submits == 2
    })
    .await;
    env.drop_file("m.yaml", manifest(1, "v2-").as_bytes());
    (env, config, daemon)
}

/// A task (or batch) Claid finishes after `api.poll.give_up_after` failed its images as
/// `task-timeout`; its final webhook, still in the daemon's life, gives them its result (the
/// run reopens and ends again, done): `replay` would have paid for them again.
#[tokio::test(flavor = "multi_thread")]
async fn a_result_announced_after_task_timeout_is_taken_not_paid_for_again() {
    for api in ["", "batch: { max_images: 1 }"] {
        let port = free_port();
        let env =
            TestEnv::new(announcing(port).latency(Latency::Fixed(Duration::from_secs(4)))).await;
        let config = giving_up_early(&env, port, api);
        let mut daemon = env.spawn_daemon(&config, 0);
        env.drop_file("m.yaml", manifest(2, "late").as_bytes());
        let reported = |status: &str| both_rows_are(&env, status);
        wait_until("the images fail as task-timeout", DEADLINE, || {
            reported("failed")
        })
        .await;
        wait_until("the late webhook gives them their result", DEADLINE, || {
            reported("done")
        })
        .await;
        crate::support::stop(&mut daemon).await;
        all_done(&env, 2);
        for i in 0..2 {
            assert!(
                env.outbox.join(format!("m/late{i}-64x48.jpg")).is_file(),
                "{api}: late{i}"
            );
        }
        let stats = env.stats();
        assert_eq!(stats.duplicate_submits, 0, "{api}: {stats:?}");
        let log = std::fs::read_to_string(env.dir.path().join("daemon-0.log")).expect("log");
        assert!(log.contains("given up as task-timeout"), "{api}: {log}");
    }
}

/// The config of the late-result tests: webhooks on `port`, tasks given up after 1.5 s.
fn giving_up_early(env: &TestEnv, port: u16, api: &str) -> PathBuf {
    let config = env.config(api, &webhook_section(env, port, "1s"));
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace(
            "poll: { min: 50ms, max: 500ms }",
            "poll: { min: 50ms, max: 500ms, give_up_after: 1500ms }",
        ),
    )
    .expect("config");
    config
}

/// Whether `m.report.json` has its two rows, both `status`.
fn both_rows_are(env: &TestEnv, status: &str) -> bool {
    std::fs::read_to_string(env.outbox.join("m.report.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|r| r["jobs"].as_array().cloned())
        .is_some_and(|rows| rows.len() == 2 && rows.iter().all(|r| r["status"] == status))
}

/// The same after a SIGKILL: the images failed as `task-timeout` and the daemon was killed
/// and started again before Claid finished; the final webhook, coming to the new process,
/// is still taken (the timed-out jobs are in the store, not only in the old process's
/// memory), so nothing is paid for twice and the report says done.
#[tokio::test(flavor = "multi_thread")]
async fn a_result_announced_after_task_timeout_and_a_restart_is_still_taken() {
    for api in ["", "batch: { max_images: 1 }"] {
        let port = free_port();
        let env =
            TestEnv::new(announcing(port).latency(Latency::Fixed(Duration::from_secs(8)))).await;
        let config = giving_up_early(&env, port, api);
        let mut daemon = env.spawn_daemon(&config, 0);
        env.drop_file("m.yaml", manifest(2, "late").as_bytes());
        let reported = |status: &str| both_rows_are(&env, status);
        wait_until("the images fail as task-timeout", DEADLINE, || {
            reported("failed")
        })
        .await;
        daemon.start_kill().expect("SIGKILL");
        let status = daemon.wait().await.expect("wait");
        assert_eq!(status.code(), None, "{api}: killed, not exited");
        assert_eq!(
            env.stats().webhooks_sent,
            0,
            "{api}: Claid had not announced the tasks before the kill"
        );
        let mut daemon = env.spawn_daemon(&config, 1);
        wait_until("the late webhook gives them their result", DEADLINE, || {
            reported("done")
        })
        .await;
        crate::support::stop(&mut daemon).await;
        all_done(&env, 2);
        for i in 0..2 {
            assert!(
                env.outbox.join(format!("m/late{i}-64x48.jpg")).is_file(),
                "{api}: late{i}"
            );
        }
        let stats = env.stats();
        assert_eq!(stats.duplicate_submits, 0, "{api}: {stats:?}");
        let log = std::fs::read_to_string(env.dir.path().join("daemon-1.log")).expect("log");
        assert!(log.contains("given up as task-timeout"), "{api}: {log}");
    }
}

/// Claid accepts every submit with an unreadable answer (a 200 whose body is no task) and
/// announces each task by webhook: the images wait for their announcements as submitting
/// (noted in the store as accepted), so their run is not ended while they wait. (They were
/// held in doubt before the wait: the run was reported "held" as soon as the canary's images
/// ended, `run --once` exited 2, and the webhooks that came during its drain were lost, the
/// images left for a `replay --in-doubt` that bills them again.)
#[tokio::test(flavor = "multi_thread")]
async fn images_whose_accepted_answer_was_unreadable_keep_their_run_open_until_adopted() {
    let port = free_port();
    let images = tempfile::tempdir().expect("static dir");
    let names: Vec<String> = (0..5).map(|i| format!("u{i}.png")).collect();
    for name in &names {
        std::fs::write(images.path().join(name), png(64, 48)).expect("image");
    }
    let env = TestEnv::new(
        announcing(port)
            .static_dir(images.path())
            .latency(Latency::Fixed(Duration::from_millis(500)))
            .garbled_share(1.0),
    )
    .await;
    let base = format!("http://{}/_static", env.emulator.addr());
    let mut text = String::from("images:\n");
    for name in &names {
        text.push_str(&format!("  - input: {base}/{name}\n"));
    }
    env.drop_file("m.yaml", text.as_bytes());
    let config = env.config("", &webhook_section(&env, port, "10s"));
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "every image adopted and delivered: {stderr}");
    let report = env.report("m");
    assert_eq!(report["counts"]["done"], 5, "{report:#}");
    assert_eq!(report["in_doubt"], 0, "nothing billed twice: {report:#}");
    let stats = env.stats();
    assert!(stats.garbled_responses >= 2, "{stats:?}");
    assert_eq!(
        stats.batch_images + stats.submits,
        5,
        "each image sent once"
    );
}

/// Claid accepted a submit (a batch, or a single task) but its answer cannot be read (a 200
/// whose body is no task), with webhooks on and the task's webhook never coming: its images
/// are held in doubt in the store before the wait for that webhook, so a crash (or a stop)
/// during the wait and a restart never send them again (they were found submitting, and sent
/// again: billed twice). The API answered, so `run --once` does not call it unreachable.
#[tokio::test(flavor = "multi_thread")]
async fn a_submit_accepted_with_an_unreadable_answer_is_held_across_a_crash_never_sent_again() {
    for api in ["", "batch: { max_images: 1 }"] {
        let port = free_port();
        let images = tempfile::tempdir().expect("static dir");
        for name in ["g0.png", "g1.png"] {
            std::fs::write(images.path().join(name), png(64, 48)).expect("image");
        }
        let env = TestEnv::new(
            announcing(port)
                .static_dir(images.path())
                .latency(Latency::Fixed(Duration::ZERO))
                .garbled_share(1.0)
                .webhook_drop_share(1.0),
        )
        .await;
        let base = format!("http://{}/_static", env.emulator.addr());
        env.drop_file(
            "m.yaml",
            format!("images:\n  - input: {base}/g0.png\n  - input: {base}/g1.png\n").as_bytes(),
        );
        let config = env.config(api, &webhook_section(&env, port, "60s"));
        let mut daemon = env.spawn_daemon(&config, 0);
        // Killed once both are held (a kill between Claid's answer and the hold is the
        // ordinary in-doubt window, which `in_doubt` governs).
        wait_until("both submits held", DEADLINE, || {
            env.daemon_log(0)
                .matches("answer cannot be read: held in doubt")
                .count()
                >= if api.is_empty() { 1 } else { 2 }
        })
        .await;
        // What was wrong with the answer is told (it said "not the expected json" alone).
        let log = env.daemon_log(0);
        assert!(
            log.contains("Claid's answer could not be read") && log.contains("parse_error="),
            "{api}: {log}"
        );
        // Killed while it waits (up to a minute) for the webhook; the next run waits less
        // for webhooks that never come.
        daemon.start_kill().expect("SIGKILL");
        daemon.wait().await.expect("wait");
        let config = env.config(api, &webhook_section(&env, port, "2s"));
        let (code, stderr) = env.run_once(&config).await;
        assert_ne!(code, 69, "{api}: the API answered: {stderr}");
        let stats = env.stats();
        assert_eq!(
            stats.batch_images + stats.submits,
            2,
            "{api}: never sent again: {stderr}"
        );
        assert_eq!(stats.duplicate_submits, 0, "{api}");
        let report = env.report("m");
        assert_eq!(report["counts"]["in-doubt"], 2, "{api}: held: {report:#}");
    }
}

/// Jobs held in doubt in an earlier life whose task's webhook the store kept (an older
/// daemon could not match its echoed request; put there by hand here) are delivered at the
/// start, and the start's summary and `run --once`'s last line no longer count them as held:
/// they said `still_held=1` and `held_from_before=1` for a job just delivered.
#[tokio::test(flavor = "multi_thread")]
async fn jobs_held_before_that_a_kept_webhook_delivers_are_not_told_as_held() {
    let port = free_port();
    let env = TestEnv::new(
        Scenario::default()
            .drop_share(1.0)
            .first_task_id(4242)
            .latency(Latency::Fixed(Duration::from_millis(100))),
    )
    .await;
    env.drop_file("m.yaml", manifest(1, "k").as_bytes());
    let config = env.config(
        "batch: { max_images: 1 }",
        &format!("{}in_doubt: hold\n", webhook_section(&env, port, "1s")),
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 2, "held in doubt: {stderr}");
    assert_eq!(env.stats().submits, 1);
    // The task its lost answer created, as its webhook announces it (Claid's own object).
    let body = env
        .emulator_result_when_done("image/edit/async/4242", DEADLINE)
        .await;
    {
        let store = claid_hotfolder::store::Store::open(&env.state).expect("store");
        store
            .keep_announcement(
                claid_hotfolder::claid::wire::TaskRef::Async(4242),
                body.as_bytes(),
            )
            .await
            .expect("kept");
    }
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    all_done(&env, 1);
    assert!(
        stderr.contains("Webhooks kept in the store by an earlier run"),
        "{stderr}"
    );
    assert!(stderr.contains("still_held=0"), "{stderr}");
    assert!(stderr.contains("held_from_before=0"), "{stderr}");
    assert_eq!(env.stats().submits, 1, "never sent again");
}

/// Rows with the same request (one input, one edit, several outputs) whose submit answers
/// come after their tasks' webhooks, some of them lost: a lost submit adopting the task of
/// another row whose answer was still on its way (the two are alike) does not strand either.
/// The row whose answer names the task adopted first adopts the other's in turn, and a lost
/// submit that finds its adoption taken waits for its own task. (One job stayed submitting
/// and `run --once` never ended, or a row was held in doubt and billed again by
/// `replay --in-doubt`; acceptance run.)
#[tokio::test(flavor = "multi_thread")]
async fn issue12_rows_with_one_request_and_lost_answers_each_adopt_a_task_of_their_own() {
    let port = free_port();
    let env = TestEnv::new(
        announcing(port)
            .latency(Latency::Fixed(Duration::from_millis(200)))
            .submit_response_delay(Duration::from_millis(1500))
            .drop_share(0.5)
            .seed(64),
    )
    .await;
    let n = 6;
    let mut text = String::from("images:\n");
    for i in 0..n {
        text.push_str(&format!(
            "  - input: storage://demo/same-64x48.png\n    output: o{i}\n"
        ));
    }
    env.drop_file("m.yaml", text.as_bytes());
    let config = env.config(
        "max_in_flight: 8\nbatch: { max_images: 1 }\nunreachable_timeout: 30s",
        &webhook_section(&env, port, "20s"),
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    all_done(&env, n);
    let stats = env.stats();
    assert!(stats.dropped_responses >= 2, "answers lost: {stats:?}");
    assert_eq!(stats.submits, n as u64, "each row billed once: {stats:?}");
    let report = env.report("m");
    assert_eq!(in_doubt_of(&report), 0, "{report:#}");
}

/// The same for batches: manifests listing the same two URLs make batches with one request;
/// their answers come after their webhooks, some lost. Each manifest's images are delivered,
/// none held in doubt, none billed twice.
#[tokio::test(flavor = "multi_thread")]
async fn issue12_batches_with_one_request_and_lost_answers_each_adopt_a_batch_of_their_own() {
    let port = free_port();
    let (statics, text) = static_images(2, "s");
    let env = TestEnv::new(
        announcing(port)
            .static_dir(statics.path())
            .latency(Latency::Fixed(Duration::from_millis(200)))
            .submit_response_delay(Duration::from_millis(1500))
            .drop_share(0.5)
            .seed(7),
    )
    .await;
    let text = env.static_urls(&text);
    let manifests = 5;
    for m in 0..manifests {
        env.drop_file(&format!("c{m}.yaml"), text.as_bytes());
    }
    let config = env.config(
        "max_in_flight: 8\nunreachable_timeout: 30s",
        &webhook_section(&env, port, "20s"),
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    let stats = env.stats();
    assert!(stats.dropped_responses >= 2, "answers lost: {stats:?}");
    assert_eq!(
        stats.batch_images,
        2 * manifests as u64,
        "each image billed once: {stats:?}"
    );
    for m in 0..manifests {
        let report = env.report(&format!("c{m}"));
        for row in report["jobs"].as_array().expect("rows") {
            assert_eq!(row["status"], "done", "c{m}: {row}");
            assert_eq!(row["in_doubt"].as_u64().unwrap_or(0), 0, "c{m}: {row}");
        }
    }
}
