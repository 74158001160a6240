//! The command line: `validate`, `plan` and `run --print-config` through the real binary.

use claid_hotfolder::emulator::Scenario;

use crate::support::{TestEnv, cli};

const GOOD: &str =
    "images:\n  - input: storage://demo/a-64x48.png\n  - input: storage://demo/b-64x48.png\n";

#[tokio::test(flavor = "multi_thread")]
async fn validate_prints_every_problem_and_exits_65_for_a_bad_manifest() {
    let env = TestEnv::new(Scenario::default()).await;
    let good = env.drop_file("good.yaml", GOOD.as_bytes());
    let bad = env.drop_file(
        "bad.yaml",
        b"images:\n  - input: ftp://x/a.png\n  - input: storage://demo/b-64x48.png\n    output: /etc/passwd\n",
    );
    let (code, out, _) = cli(&["validate", good.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok (2 images)"), "{out}");
    let (code, out, _) = cli(&["validate", good.to_str().unwrap(), bad.to_str().unwrap()]).await;
    assert_eq!(code, 65, "EX_DATAERR: {out}");
    assert!(
        out.contains("line 2"),
        "the input problem and its line: {out}"
    );
    assert!(
        out.contains("line 4"),
        "the output problem and its line: {out}"
    );
    assert!(
        env.inbox.join("bad.yaml").is_file(),
        "validate never moves files"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_checks_a_config_and_names_the_key_and_line() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("requests_per_secnd: 4", "");
    let (code, out, err) = cli(&["validate", config.to_str().unwrap()]).await;
    assert_eq!(code, 65, "EX_DATAERR: {out}{err}");
    assert!(out.contains("requests_per_secnd"), "names the key: {out}");
    assert!(
        out.contains("requests_per_second"),
        "suggests the fix: {out}"
    );
    let (code, _, err) = cli(&["run", "--once", "--config", config.to_str().unwrap()]).await;
    assert_eq!(code, 64, "a bad config exits 64: {err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_counts_new_and_unchanged_images_without_calling_the_api() {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file("p.yaml", GOOD.as_bytes());
    let config = env.config("", "");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    let before = env.stats().requests;
    let changed = env.drop_file(
        "p.yaml",
        format!("{GOOD}  - input: storage://demo/c-64x48.png\n").as_bytes(),
    );
    let (code, out, err) = cli(&[
        "plan",
        changed.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("3 images: 1 to process, 2 unchanged"), "{out}");
    assert_eq!(env.stats().requests, before, "plan makes no API call");
}

#[tokio::test(flavor = "multi_thread")]
async fn print_config_shows_the_effective_config_without_the_key() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    let (code, out, _) = cli(&[
        "run",
        "--print-config",
        "--config",
        config.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0);
    assert!(out.contains("max_in_flight"), "{out}");
    assert!(
        !out.contains("test-key"),
        "the API key never appears: {out}"
    );
}
