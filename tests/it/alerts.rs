//! Alerts (issue 14), against the real daemon binary, the emulator and a local HTTP receiver:
//! exactly the expected messages for a drop with failures, a 402 pause and its resume, a stall
//! and a rejected manifest (JSON and Slack formats); with the receiver down the results are the
//! same, the drops are counted, and the secret URL is never logged.

use std::path::PathBuf;
use std::time::Duration;

use claid_hotfolder::emulator::{Latency, Scenario};
use serde_json::Value;

use crate::support::{Receiver, TestEnv, stop, wait_for, wait_until};

const DEADLINE: Duration = Duration::from_secs(60);

/// A manifest of `n` demo images; the indexes in `corrupt` fail at the emulator (`claid-error`).
fn manifest(n: usize, prefix: &str, corrupt: &[usize]) -> String {
    let mut text = String::from("images:\n");
    for i in 0..n {
        let name = if corrupt.contains(&i) { "corrupt-" } else { "" };
        text.push_str(&format!(
            "  - input: storage://demo/{name}{prefix}{i}-64x48.png\n"
        ));
    }
    text
}

/// Writes the URL of a sink into its own file; returns the file.
fn url_file(env: &TestEnv, name: &str, url: &str) -> PathBuf {
    let path = env.dir.path().join(format!("{name}.url"));
    std::fs::write(&path, format!("{url}\n")).expect("url file");
    path
}

fn events(messages: &[Value]) -> Vec<&str> {
    messages
        .iter()
        .map(|m| m["event"].as_str().unwrap_or("?"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn alerts_for_a_drop_with_failures_are_one_message_with_totals_and_codes() {
    let env = TestEnv::new(Scenario::default().seed(1)).await;
    let receiver = Receiver::start().await;
    let both = url_file(&env, "both", &receiver.url("/both"));
    let failed_only = url_file(&env, "failed", &receiver.url("/failed"));
    env.drop_file("spring/shoes.yaml", manifest(6, "s", &[1, 4]).as_bytes());
    let config = env.config(
        "",
        &format!(
            "alerts:\n  - {{ name: team, url_file: {}, format: json, events: [manifest-finished, jobs-failed] }}\n  - {{ name: oncall, url_file: {}, format: json, events: [jobs-failed] }}\n",
            both.display(),
            failed_only.display()
        ),
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 2, "some jobs failed: {stderr}");
    // `run --once` returns after its alerts were delivered.
    let team = receiver.on("/both");
    assert_eq!(events(&team), ["manifest-finished"], "{team:#?}");
    let finished = &team[0];
    assert_eq!(finished["manifest"], "spring/shoes.yaml");
    assert_eq!(finished["counts"]["total"], 6);
    assert_eq!(finished["counts"]["done"], 4);
    assert_eq!(finished["counts"]["failed"], 2);
    assert_eq!(
        finished["failures"],
        serde_json::json!({ "claid-error": 2 })
    );
    assert!(
        finished["text"]
            .as_str()
            .is_some_and(|t| t.contains("claid-error")),
        "{finished}"
    );
    assert!(
        finished.get("dashboard").is_none(),
        "no dashboard link when web is off"
    );
    // A sink without `manifest-finished` gets the failures as one `jobs-failed` message.
    let oncall = receiver.on("/failed");
    assert_eq!(events(&oncall), ["jobs-failed"], "{oncall:#?}");
    assert_eq!(oncall[0]["failed"], 2);
    assert_eq!(oncall[0]["manifest"], "spring/shoes.yaml");
    assert_eq!(oncall[0]["failures"]["claid-error"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn alerts_tell_a_402_pause_and_its_resume() {
    let env = TestEnv::new(Scenario::default().credits_exhausted(true)).await;
    let receiver = Receiver::start().await;
    let url = url_file(&env, "all", &receiver.url("/all"));
    let config = env.config(
        "",
        &format!(
            "alerts:\n  - {{ url_file: {}, format: json }}\n",
            url.display()
        ),
    );
    let mut daemon = env.spawn_daemon(&config, 0);
    env.drop_file("c.yaml", manifest(2, "c", &[]).as_bytes());
    let paused = wait_for("the paused message", DEADLINE, async || {
        receiver
            .on("/all")
            .into_iter()
            .find(|m| m["event"] == "paused")
    })
    .await;
    assert_eq!(paused["cause"], "402");
    assert!(
        paused["text"]
            .as_str()
            .is_some_and(|t| t.contains("out of credits")),
        "{paused}"
    );
    env.emulator.control().set_credits_exhausted(false);
    wait_for("the run finishes after the resume", DEADLINE, async || {
        receiver
            .on("/all")
            .into_iter()
            .find(|m| m["event"] == "manifest-finished")
    })
    .await;
    stop(&mut daemon).await;
    let all = receiver.on("/all");
    assert_eq!(
        events(&all),
        ["paused", "resumed", "manifest-finished"],
        "{all:#?}"
    );
    assert_eq!(all[1]["cause"], "402");
    assert_eq!(all[2]["counts"]["done"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn alerts_tell_a_stall_once() {
    // The one task never finishes while the test runs: work is pending, nothing moves.
    let env =
        TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_secs(600)))).await;
    let receiver = Receiver::start().await;
    let url = url_file(&env, "stall", &receiver.url("/stall"));
    let config = env.config(
        "",
        &format!(
            "alerts:\n  - {{ url_file: {}, format: json, events: [stalled], stalled_after: 1s }}\n",
            url.display()
        ),
    );
    let mut daemon = env.spawn_daemon(&config, 0);
    env.drop_file("slow.yaml", manifest(1, "slow", &[]).as_bytes());
    let stalled = wait_for("the stalled message", DEADLINE, async || {
        receiver.on("/stall").into_iter().next()
    })
    .await;
    assert_eq!(stalled["event"], "stalled");
    assert_eq!(stalled["in_flight"], 1);
    assert_eq!(stalled["queued"], 0);
    assert!(
        stalled["idle_seconds"].as_u64().is_some_and(|s| s >= 1),
        "{stalled}"
    );
    assert!(
        stalled["manifests"][0]
            .as_str()
            .is_some_and(|m| m.starts_with("slow.yaml")),
        "{stalled}"
    );
    // The stall goes on for several more `stalled_after` (polls keep coming, nothing moves):
    // still one message.
    let polls_then = env.stats().polls;
    wait_until("six more polls of the stuck task", DEADLINE, || {
        env.stats().polls >= polls_then + 6
    })
    .await;
    stop(&mut daemon).await;
    assert_eq!(
        receiver.on("/stall").len(),
        1,
        "{:#?}",
        receiver.on("/stall")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn alerts_tell_a_rejected_manifest_with_its_first_problems_in_json_and_slack() {
    let env = TestEnv::new(Scenario::default()).await;
    let receiver = Receiver::start().await;
    let json = url_file(&env, "json", &receiver.url("/json"));
    let slack = url_file(&env, "slack", &receiver.url("/slack"));
    env.drop_file(
        "<!channel> drop.yaml",
        b"images:\n  - input: 12\n  - input: storage://demo/a-64x48.png\n    operations: { nope: 1 }\n",
    );
    let config = env.config(
        "",
        &format!(
            "web:\n  listen: 127.0.0.1:0\n  public_url: https://claid.example.com/\nalerts:\n  - {{ url_file: {}, events: [manifest-rejected] }}\n  - {{ url_file: {}, format: slack, events: [manifest-rejected] }}\n",
            json.display(),
            slack.display()
        ),
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 2, "{stderr}");
    let json = receiver.on("/json");
    assert_eq!(events(&json), ["manifest-rejected"], "{json:#?}");
    assert_eq!(json[0]["manifest"], "<!channel> drop.yaml");
    let problems: Vec<&str> = json[0]["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        problems.iter().any(|p| p.contains("line 2"))
            && problems.iter().any(|p| p.contains("nope")),
        "{problems:#?}"
    );
    // The problems themselves, first to last: not the error file's header (its path, the
    // count, what to do), which would take three of the eight lines.
    assert!(problems[0].starts_with("line 2"), "{problems:#?}");
    assert!(
        problems.iter().all(|p| !p.starts_with("manifest: ")
            && !p.starts_with("rejected: ")
            && !p.starts_with("Fix every problem")),
        "{problems:#?}"
    );
    assert!(
        json[0]["text"]
            .as_str()
            .is_some_and(|t| t.contains(": line 2")),
        "the summary names the first problem: {}",
        json[0]["text"]
    );
    assert_eq!(json[0]["dashboard"], "https://claid.example.com/rejected");
    let slack = receiver.on("/slack");
    assert_eq!(slack.len(), 1, "{slack:#?}");
    let text = slack[0]["blocks"][0]["text"]["text"]
        .as_str()
        .expect("text");
    assert!(text.contains("&lt;!channel&gt; drop.yaml"), "{text}");
    assert!(
        !text.contains("<!channel>"),
        "Slack would notify the channel: {text}"
    );
    let button = slack[0]["blocks"]
        .as_array()
        .expect("blocks")
        .iter()
        .find(|b| b["type"] == "actions")
        .expect("a button to the dashboard");
    assert_eq!(
        button["elements"][0]["url"],
        "https://claid.example.com/rejected"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn alerts_with_the_receiver_down_change_nothing_and_count_the_drops() {
    let env = TestEnv::new(Scenario::default().seed(4)).await;
    // A port nothing listens on, and a URL with a secret in it.
    let port = crate::support::webdriver::free_port();
    let secret = "T000-B000-SECRETsecret";
    let url = url_file(
        &env,
        "down",
        &format!("http://127.0.0.1:{port}/services/{secret}"),
    );
    let config = env.config(
        "",
        &format!(
            "alerts:\n  - {{ name: down, url_file: {}, format: slack, retry_for: 1s }}\n",
            url.display()
        ),
    );
    let mut daemon = env.spawn_daemon(&config, 0);
    env.drop_file("d.yaml", manifest(8, "d", &[]).as_bytes());
    wait_until("the report", DEADLINE, || {
        std::fs::read_to_string(env.outbox.join("d.report.json"))
            .is_ok_and(|t| t.contains("\"done\": 8"))
    })
    .await;
    assert_eq!(TestEnv::files_under(&env.outbox.join("d")).len(), 8);
    assert_eq!(env.stats().duplicate_submits, 0, "no image submitted twice");
    let metrics = wait_for("the drop is counted", DEADLINE, async || {
        let (status, body) =
            claid_hotfolder::admin::request(&env.socket(), "GET", "/metrics", None)
                .await
                .ok()?;
        let text = String::from_utf8_lossy(&body).into_owned();
        (status == 200
            && text.contains(
                "claid_hotfolder_alerts_dropped_total{sink=\"down\",reason=\"gave-up\"} 1",
            ))
        .then_some(text)
    })
    .await;
    assert!(!metrics.contains("claid_hotfolder_alerts_sent_total{sink=\"down\"} 1"));
    stop(&mut daemon).await;
    let log = env.daemon_log(0);
    assert!(
        log.contains("Alert dropped") && log.contains("sink=down"),
        "the drop is logged: {log}"
    );
    assert!(!log.contains(secret), "the webhook URL is a secret: {log}");
}
