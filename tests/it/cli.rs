//! The command line through the real binary: `validate`, `plan`, `run --print-config`, and
//! issue 13's exit codes, folders, argument checks, read-only commands, help and error texts
//! (snapshots in `tests/it/snapshots/`; `SNAPSHOTS=overwrite cargo test` rewrites them).

use std::ops::Not;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use claid_hotfolder::codes::StateName;
use claid_hotfolder::emulator::Scenario;
use claid_hotfolder::{config, exit};

use crate::support::{TestEnv, cli, cli_unprivileged, cli_with, png};

const GOOD: &str =
    "images:\n  - input: storage://demo/a-64x48.png\n  - input: storage://demo/b-64x48.png\n";

/// `validate` and `plan` given a FIFO, a device or a folder refuse it at once (65), naming
/// it and what to give instead: a FIFO's open waited for a writer for ever, and `/dev/zero`
/// was read until memory ran out (acceptance run).
#[tokio::test(flavor = "multi_thread")]
async fn validate_and_plan_refuse_what_is_no_regular_file_at_once() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    let fifo = env.dir.path().join("m.yaml");
    crate::support::mkfifo(&fifo);
    let fifo = fifo.to_str().unwrap();
    let folder = env.dir.path().to_str().unwrap();
    let config = config.to_str().unwrap();
    for args in [
        vec!["validate", fifo],
        vec!["validate", "/dev/zero"],
        vec!["validate", "-c", config, folder],
        vec!["plan", "-c", config, fifo],
    ] {
        let (code, out, err) = tokio::time::timeout(Duration::from_secs(30), cli(&args))
            .await
            .expect("ends at once");
        assert_eq!(code, 65, "{args:?}: {out}{err}");
        let said = format!("{out}{err}");
        assert!(
            said.contains(args[args.len() - 1])
                && (said.contains("no regular file") || said.contains("a folder"))
                && said.contains("save it to a file first"),
            "{args:?}: {said}"
        );
    }
    // A config that is a FIFO, for every command that reads one (they hung).
    for args in [
        vec!["validate", "-c", fifo, "/dev/null"],
        vec!["plan", "-c", fifo, "/dev/null"],
        vec!["run", "--once", "--config", fifo],
    ] {
        let (code, out, err) = tokio::time::timeout(Duration::from_secs(30), cli(&args))
            .await
            .expect("ends at once");
        let said = format!("{out}{err}");
        assert_ne!(code, 0, "{args:?}: {said}");
        assert!(
            said.contains("not a regular file") && said.contains(fifo),
            "{args:?}: {said}"
        );
    }
}

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

/// A control character pasted into a manifest (YAML and JSON allow none but tab and line
/// breaks) is named with its line (and, in YAML, whose parser gives none, its column).
#[tokio::test(flavor = "multi_thread")]
async fn a_control_character_in_a_manifest_is_named_with_its_line() {
    let env = TestEnv::new(Scenario::default()).await;
    for (name, text) in [
        (
            "c.yaml",
            "images:\n  - input: storage://demo/a-64x48.png\n  - input: \"storage://demo/b\u{1}-64x48.png\"\n",
        ),
        (
            "c.json",
            "{\"images\": [\n  {\"input\": \"storage://demo/a-64x48.png\"},\n  {\"input\": \"storage://demo/b\u{1}-64x48.png\"}\n]}\n",
        ),
    ] {
        let manifest = env.drop_file(name, text.as_bytes());
        let (code, out, _) = cli(&["validate", manifest.to_str().unwrap()]).await;
        assert_eq!(code, 65, "{out}");
        assert!(out.contains("line 3: "), "{name}: names the line: {out}");
        if name.ends_with(".yaml") {
            assert!(out.contains("column 29") && out.contains("U+0001"), "{out}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_output_that_is_a_file_where_another_needs_a_folder_is_refused_before_any_spend() {
    let env = TestEnv::new(Scenario::default()).await;
    let manifest = env.drop_file(
        "c.yaml",
        b"output: { format: jpeg }\nimages:\n  - input: storage://demo/a-64x48.png\n    output: sub\n  - input: storage://demo/b-64x48.png\n    output: sub.jpg/x.jpg\n  - input: storage://demo/c-64x48.png\n    output: ok\n",
    );
    let (code, out, _) = cli(&["validate", manifest.to_str().unwrap()]).await;
    assert_eq!(code, 65, "{out}");
    assert!(
        out.contains("line 6") && out.contains("sub.jpg/x.jpg") && out.contains("images[0]"),
        "names the line, the output and the other image: {out}"
    );
    // The other order: the folder's image first.
    let swapped = env.dir.path().join("swapped.yaml");
    std::fs::write(
        &swapped,
        "output: { format: jpeg }\nimages:\n  - input: storage://demo/b-64x48.png\n    output: sub.jpg/x.jpg\n  - input: storage://demo/a-64x48.png\n    output: sub\n",
    )
    .unwrap();
    let (code, out, _) = cli(&["validate", swapped.to_str().unwrap()]).await;
    assert_eq!(code, 65, "{out}");
    assert!(out.contains("line 6") && out.contains("images[0]"), "{out}");
    // The daemon refuses the manifest before any submit.
    let config = env.config("", "");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(env.stats().submits, 0, "nothing billed");
    assert!(env.rejected.join("c.yaml").is_file(), "rejected");
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
    assert!(!out.contains("outside the inbox"), "{out}");
    // A copy outside the inbox is planned as if at the inbox's top, and says so (it said
    // nothing, and a file meant for a subfolder was planned with another folder's outputs).
    let outside = env.dir.path().join("staging/p.yaml");
    std::fs::create_dir_all(outside.parent().expect("parent")).expect("dir");
    std::fs::copy(&changed, &outside).expect("copy");
    let (code, out, err) = cli(&[
        "plan",
        outside.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(
            "is outside the inbox: planned as if dropped at the top of the inbox, as `p.yaml`"
        ),
        "{out}"
    );
    assert_eq!(env.stats().requests, before, "plan makes no API call");
}

/// `plan` shows a name derived from an input that keeps a bidirectional override escaped, as
/// `jobs` does: it printed U+202E raw, which turns the rest of the line around on a terminal.
#[tokio::test(flavor = "multi_thread")]
async fn plan_escapes_a_bidirectional_override_in_the_names_it_shows() {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file("x\u{202e}gnp.exe.png", &crate::support::png(64, 48));
    let manifest = env.dir.path().join("p.yaml");
    std::fs::write(&manifest, "images:\n  - input: \"x\u{202e}gnp.exe.png\"\n").expect("manifest");
    let inbox_copy = env.inbox.join(".p.yaml");
    std::fs::copy(&manifest, &inbox_copy).expect("copy");
    let config = env.config("", "");
    let (code, out, err) = cli(&[
        "plan",
        inbox_copy.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("x\\u{202e}gnp.exe.png"), "{out}");
    assert!(!out.contains('\u{202e}'), "{out:?}");
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

// ---- Issue 13: a CLI that tells the truth ----

/// Where the snapshots of help and error texts live (`SNAPSHOTS=overwrite` rewrites them).
fn snapshot_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/snapshots")
        .join(format!("{name}.txt"))
}

/// Compares `actual` with the snapshot `name`, with the temp dir written `[ROOT]`.
fn assert_snapshot(name: &str, actual: &str, root: Option<&Path>) {
    let mut redactions = snapbox::Redactions::new();
    if let Some(root) = root {
        redactions
            .insert("[ROOT]", root.to_path_buf())
            .expect("placeholder");
    }
    snapbox::Assert::new()
        .action_env(snapbox::assert::DEFAULT_ACTION_ENV)
        .redact_with(redactions)
        .eq(
            actual.to_owned(),
            snapbox::Data::read_from(&snapshot_path(name), None),
        );
}

/// `TestEnv::config` with `folders.create: true` and the replacements `(from, to)` applied.
fn config_edited(env: &TestEnv, create: bool, edits: &[(&str, &str)]) -> PathBuf {
    let path = env.config("", "");
    let mut text = std::fs::read_to_string(&path).expect("config");
    if create {
        text = text.replace("folders:\n", "folders:\n  create: true\n");
    }
    for (from, to) in edits {
        assert!(text.contains(from), "{from} in {text}");
        text = text.replace(from, to);
    }
    std::fs::write(&path, text).expect("config");
    path
}

/// Runs `run --once` through the CLI helpers (so the env is the snapshots' one).
async fn run_once(config: &Path) -> (i32, String) {
    let (code, out, err) = cli(&["run", "--once", "--config", config.to_str().unwrap()]).await;
    (code, format!("{out}{err}"))
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Every row of the exit-code table (`exit::TABLE`, the README's "Exit codes") is what the real
/// binary exits with in a situation the row names; a row without a situation here fails.
#[tokio::test(flavor = "multi_thread")]
async fn issue13_every_row_of_the_exit_code_table_is_what_the_binary_exits_with() {
    for (code, name, _) in exit::TABLE {
        let (found, output) = match *code {
            exit::OK => exit_ok().await,
            exit::JOBS_FAILED => exit_jobs_failed().await,
            exit::USAGE => exit_usage().await,
            exit::DATA_ERR => exit_data_err().await,
            exit::UNAVAILABLE => exit_unavailable().await,
            exit::CANT_CREATE => exit_cant_create().await,
            exit::IO_ERR => exit_io_err().await,
            exit::TEMP_FAIL => exit_temp_fail().await,
            exit::NO_PERM => exit_no_perm().await,
            other => panic!("the row {other} {name} has no situation in this test"),
        };
        assert_eq!(found, *code, "{name}:\n{output}");
    }
}

/// 0: everything done; `replay` with nothing to replay says so and succeeds.
async fn exit_ok() -> (i32, String) {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file("m.yaml", GOOD.as_bytes());
    let config = env.config("", "");
    let (code, output) = run_once(&config).await;
    assert_eq!(code, 0, "{output}");
    let (code, out, err) = cli(&["replay", "--failed", "--config", config.to_str().unwrap()]).await;
    assert!(
        out.contains("Nothing to replay: no job of a manifest's latest run has failed"),
        "{out}"
    );
    (code, format!("{out}{err}"))
}

/// 2: `run --once` with a job that fails.
async fn exit_jobs_failed() -> (i32, String) {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file(
        "m.yaml",
        b"images:\n  - input: storage://demo/corrupt-64x48.png\n",
    );
    run_once(&env.config("", "")).await
}

/// 64: a folder of the config is missing (and, through clap, an unknown state).
async fn exit_usage() -> (i32, String) {
    let (code, _, err) = cli(&["jobs", "--state", "bogus"]).await;
    assert_eq!(code, 64, "{err}");
    let env = TestEnv::new(Scenario::default()).await;
    std::fs::remove_dir(&env.archive).expect("rmdir");
    run_once(&env.config("", "")).await
}

/// 65: `validate` of a manifest with a problem.
async fn exit_data_err() -> (i32, String) {
    let env = TestEnv::new(Scenario::default()).await;
    let bad = env.drop_file("bad.yaml", b"images:\n  - input: ftp://x/a.png\n");
    let (code, out, err) = cli(&["validate", bad.to_str().unwrap()]).await;
    (code, format!("{out}{err}"))
}

/// 69: `run --once` gives up on an API nothing answers for.
async fn exit_unavailable() -> (i32, String) {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file("m.yaml", GOOD.as_bytes());
    let base = env.emulator.base_url();
    let down = format!("http://127.0.0.1:{}/v1", closed_port());
    let config = config_edited(
        &env,
        false,
        &[
            (&base, &down),
            ("api:\n", "api:\n  unreachable_timeout: 1s\n"),
        ],
    );
    run_once(&config).await
}

/// 73: `folders.create: true`, but a file stands where a folder must be made.
async fn exit_cant_create() -> (i32, String) {
    let env = TestEnv::new(Scenario::default()).await;
    let file = env.dir.path().join("a-file");
    std::fs::write(&file, b"x").expect("file");
    let outbox = env.outbox.display().to_string();
    let under_file = file.join("outbox").display().to_string();
    let config = config_edited(&env, true, &[(&outbox, &under_file)]);
    run_once(&config).await
}

/// 74: `status` on a store whose files are damaged.
async fn exit_io_err() -> (i32, String) {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file("m.yaml", GOOD.as_bytes());
    let config = env.config("", "");
    let (code, output) = run_once(&config).await;
    assert_eq!(code, 0, "{output}");
    std::fs::write(env.state.join("v1/conf"), b"\xff not a sled config \xff").expect("damage");
    let (code, out, err) = cli(&["status", "--config", config.to_str().unwrap()]).await;
    (code, format!("{out}{err}"))
}

/// 75: a second daemon on the store a running one holds: try again once it has stopped.
async fn exit_temp_fail() -> (i32, String) {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    let mut first = env.spawn_daemon(&config, 0);
    crate::support::wait_until("the first daemon's socket", DEADLINE, || {
        env.socket().exists()
    })
    .await;
    let result = run_once(&config).await;
    crate::support::stop(&mut first).await;
    result
}

/// 77: an inbox the daemon may not write to.
async fn exit_no_perm() -> (i32, String) {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    env.open_to_others();
    std::fs::set_permissions(&env.inbox, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    let (code, out, err) =
        cli_unprivileged(&["run", "--once", "--config", config.to_str().unwrap()]).await;
    assert!(
        err.contains("folders.inbox") && err.contains("cannot read and write"),
        "names the key and the access: {err}"
    );
    (code, format!("{out}{err}"))
}

const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn issue13_a_missing_folder_stops_the_daemon_naming_the_key_the_path_and_the_nearest_parent()
{
    let env = TestEnv::new(Scenario::default()).await;
    let outbox = env.outbox.display().to_string();
    let typo = env.dir.path().join("typo/outbx");
    let config = config_edited(&env, false, &[(&outbox, &typo.display().to_string())]);
    let (code, out, err) = cli_with(
        &["run", "--config", config.to_str().unwrap()],
        &[("JOURNAL_STREAM", "8:1")],
    )
    .await;
    assert_eq!(code, 64, "{out}{err}");
    assert_eq!(
        err.lines().count(),
        1,
        "one line, printed once (no timestamp under journald): {err}"
    );
    assert!(err.contains("`folders.outbox`"), "{err}");
    assert!(err.contains(&typo.display().to_string()), "{err}");
    assert!(
        err.contains(&format!(
            "the nearest existing folder above it is {}",
            env.dir.path().display()
        )),
        "{err}"
    );
    assert!(!typo.parent().unwrap().exists(), "nothing was created");
    assert!(!env.state.exists(), "not even the state folder");
    assert_snapshot("error-missing-folder", &err, Some(env.dir.path()));

    // `validate` of that config says the same before the daemon is started.
    let (code, out, _) = cli(&["validate", config.to_str().unwrap()]).await;
    assert_eq!(code, 65, "{out}");
    assert!(out.contains("`folders.outbox`"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn issue13_folders_create_true_and_the_embedded_demo_create_missing_folders() {
    let env = TestEnv::new(Scenario::default()).await;
    for folder in [&env.outbox, &env.archive, &env.rejected] {
        std::fs::remove_dir(folder).expect("rmdir");
    }
    env.drop_file("m.yaml", GOOD.as_bytes());
    let config = config_edited(&env, true, &[]);
    let (code, output) = run_once(&config).await;
    assert_eq!(code, 0, "{output}");
    assert!(env.outbox.join("m/a-64x48.jpg").is_file(), "{output}");
    assert!(env.archive.join("m.yaml").is_file());
    assert!(env.rejected.is_dir());

    // `api.base_url: embedded` (the quickstart) creates every folder of a fresh clone.
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo.yaml");
    std::fs::write(
        &demo,
        "api: { base_url: embedded }\nfolders: { inbox: in, outbox: out/outbox, archive: out/archive, rejected: out/rejected, state: out/state }\nwatch: { settle: 100ms }\n",
    )
    .unwrap();
    let (code, output) = run_once(&demo).await;
    assert_eq!(code, 0, "{output}");
    for folder in [
        "in",
        "out/outbox",
        "out/archive",
        "out/rejected",
        "out/state",
    ] {
        assert!(dir.path().join(folder).is_dir(), "{folder}: {output}");
    }
}

/// A second `run --once` on the embedded emulator (the quickstart's), with a new manifest:
/// its images are made. The emulator, started again, counted task ids from 1 again, and the
/// store held those tasks from the first run: every new image was held in doubt ("a task
/// another job took"), exit 2.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_run_on_the_embedded_emulator_makes_its_new_images() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("demo.yaml");
    std::fs::write(
        &config,
        "api: { base_url: embedded, batch: { max_images: 1 } }\nfolders: { inbox: in, outbox: out/outbox, archive: out/archive, rejected: out/rejected, state: out/state }\nwatch: { settle: 100ms }\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    std::fs::write(dir.path().join("in/one.yaml"), GOOD).unwrap();
    let (code, output) = run_once(&config).await;
    assert_eq!(code, 0, "{output}");
    std::fs::write(
        dir.path().join("in/two.yaml"),
        "images:\n  - input: storage://demo/c-40x30.png\n  - input: storage://demo/d-40x30.png\n",
    )
    .unwrap();
    let (code, output) = run_once(&config).await;
    assert_eq!(code, 0, "{output}");
    for name in ["c-40x30.jpg", "d-40x30.jpg"] {
        assert!(
            dir.path().join("out/outbox/two").join(name).is_file(),
            "{name}: {output}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn issue13_jobs_state_accepts_only_real_states_and_lists_them() {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file("m.yaml", GOOD.as_bytes());
    let config = env.config("", "");
    let (code, output) = run_once(&config).await;
    assert_eq!(code, 0, "{output}");
    let (code, out, err) = cli(&["jobs", "--state", "bogus"]).await;
    assert_eq!(code, 64, "{out}{err}");
    for state in StateName::ALL {
        assert!(err.contains(state.as_str()), "lists {state}: {err}");
    }
    assert_snapshot("error-jobs-bad-state", &err, None);
    for (state, n) in [("done", 2), ("in-doubt", 0), ("in_doubt", 0), ("queued", 0)] {
        let (code, out, err) = cli(&[
            "jobs",
            "--state",
            state,
            "--config",
            config.to_str().unwrap(),
        ])
        .await;
        assert_eq!(code, 0, "{state}: {err}");
        assert!(out.ends_with(&format!("\n{n} jobs\n")), "{state}: {out}");
    }
}

/// Every flag that takes one of a fixed set of values (clap's possible values) refuses another
/// with 64 and lists the set.
#[tokio::test(flavor = "multi_thread")]
async fn issue13_every_enum_valued_flag_refuses_other_values_and_lists_them() {
    let cmd = claid_hotfolder::cli::documented_command();
    let mut n_flags = 0;
    for sub in cmd.get_subcommands() {
        for arg in sub.get_arguments() {
            let values: Vec<String> = arg
                .get_possible_values()
                .iter()
                .filter(|v| !v.is_hide_set())
                .map(|v| v.get_name().to_owned())
                .collect();
            let Some(long) = arg.get_long() else { continue };
            if values.is_empty() || arg.get_action().takes_values().not() {
                continue;
            }
            n_flags += 1;
            let flag = format!("--{long}");
            let (code, _, err) = cli(&[sub.get_name(), &flag, "no-such-value"]).await;
            assert_eq!(code, 64, "{} {flag}: {err}", sub.get_name());
            for value in &values {
                assert!(err.contains(value.as_str()), "{flag} lists {value}: {err}");
            }
        }
    }
    assert!(
        n_flags >= 4,
        "jobs --state and the emulator's three: {n_flags}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn issue13_validate_hints_at_the_config_only_for_a_profile_no_config_defines() {
    // (And for a storage destination, issue 15.)
    let env = TestEnv::new(Scenario::default()).await;
    let profiled = env.drop_file(
        "p.yaml",
        b"profile: white-1000\nimages:\n  - input: storage://demo/a-64x48.png\n",
    );
    let (code, out, _) = cli(&["validate", profiled.to_str().unwrap()]).await;
    assert_eq!(code, 65, "{out}");
    assert!(
        out.contains("hint: no config was read") && out.contains("--config"),
        "{out}"
    );
    assert_snapshot(
        "validate-profile-without-config",
        &out,
        Some(env.dir.path()),
    );

    // So is a storage destination: no storage is known because no config was read (it
    // said to add one to a config never given).
    let stored = env.drop_file(
        "s.yaml",
        b"output: { destination: storage://catalog/out/ }\nimages:\n  - input: https://example.com/a.png\n",
    );
    let (code, out, _) = cli(&["validate", stored.to_str().unwrap()]).await;
    assert_eq!(code, 65, "{out}");
    assert!(
        out.contains("hint: no config was read, so no storage is known")
            && out.contains("--config"),
        "{out}"
    );

    // Not appended to unrelated problems.
    let unrelated = env.drop_file("u.yaml", b"images:\n  - input: ftp://x/a.png\n");
    let (code, out, _) = cli(&["validate", unrelated.to_str().unwrap()]).await;
    assert_eq!(code, 65, "{out}");
    assert!(!out.contains("hint"), "{out}");

    // With the config that defines the profile, the manifest is fine.
    let config = env.config(
        "",
        "profiles:\n  white-1000:\n    operations: { resizing: { width: 100 } }",
    );
    let (code, out, err) = cli(&[
        "validate",
        "--config",
        config.to_str().unwrap(),
        profiled.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("hint"), "{out}");

    // Given among the files (`validate config.yaml p.yaml`), the config is used for the
    // manifest too, and says so (the manifest was checked without it).
    let (code, out, err) = cli(&[
        "validate",
        config.to_str().unwrap(),
        profiled.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("Manifests are checked with the config") && !out.contains("hint"),
        "{out}"
    );
}

/// Every file under `root`: its size, modification time, mode and owner.
fn tree_state(root: &Path) -> Vec<(PathBuf, u64, i64, i64, u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        out.push((
            path.strip_prefix(root).unwrap().to_path_buf(),
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.mode(),
            meta.uid(),
        ));
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read_dir") {
                stack.push(entry.expect("entry").path());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn issue13_status_jobs_and_plan_with_the_daemon_down_change_nothing_in_the_state_folder() {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file("m.yaml", GOOD.as_bytes());
    let config = env.config("", "");
    let (code, output) = run_once(&config).await;
    assert_eq!(code, 0, "{output}");
    let before = tree_state(&env.state);
    assert!(before.len() > 3, "a store was written: {before:?}");
    let config = config.to_str().unwrap();
    let redo = env.drop_file("m.yaml", GOOD.as_bytes());
    for args in [
        vec!["status", "--config", config],
        vec!["status", "--json", "--config", config],
        vec!["jobs", "--config", config],
        vec!["jobs", "--state", "done", "--config", config],
        vec!["plan", redo.to_str().unwrap(), "--config", config],
    ] {
        let (code, out, err) = cli(&args).await;
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        // What was read came from the store.
        let read = match args[0] {
            "status" => out.contains("m.yaml"),
            "jobs" => out.ends_with("\n2 jobs\n"),
            _ => out.contains("2 images: 0 to process, 2 unchanged"),
        };
        assert!(read, "{args:?} read the store: {out}");
        assert_eq!(
            tree_state(&env.state),
            before,
            "{args:?} changed the state folder"
        );
    }
}

/// `jobs` interrupted (Ctrl-C, or `timeout`'s SIGTERM) while it copies the store for reading
/// removes its copy: it ends as the signal would have ended it, and `$TMPDIR` holds nothing
/// of it afterwards (a store of hundreds of megabytes was left there at each interruption).
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_jobs_command_leaves_no_copy_of_the_store_behind() {
    use std::io::Write;
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file("m.yaml", GOOD.as_bytes());
    let config = env.config("", "");
    let (code, output) = run_once(&config).await;
    assert_eq!(code, 0, "{output}");
    // A large store takes a while to copy: 256 MB in its blobs folder.
    let blobs = env.state.join("v1/blobs");
    std::fs::create_dir_all(&blobs).expect("blobs");
    let mut big = std::fs::File::create(blobs.join("ballast")).expect("ballast");
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..256 {
        big.write_all(&chunk).expect("ballast");
    }
    drop(big);
    for (signal, expected) in [("-INT", 130), ("-TERM", 143)] {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut child = tokio::process::Command::new(crate::support::bin())
            .args(["jobs", "--config", config.to_str().unwrap()])
            .env("TMPDIR", tmp.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::fs::read_dir(tmp.path()).expect("tmp").count() == 0 {
            assert!(std::time::Instant::now() < deadline, "no copy started");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        crate::support::signal(&child, signal);
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("it ends")
            .expect("wait");
        assert_eq!(status.code(), Some(expected), "{signal}");
        assert_eq!(
            std::fs::read_dir(tmp.path()).expect("tmp").count(),
            0,
            "{signal}: the copy is removed"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn issue13_a_store_the_user_may_not_read_says_which_group_to_join() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file("m.yaml", GOOD.as_bytes());
    let config = env.config("", "");
    let (code, output) = run_once(&config).await;
    assert_eq!(code, 0, "{output}");
    env.open_to_others();
    // The service's layout: the state folder is the service user's and its group's, mode 0750
    // (`StateDirectoryMode=`). Here the group is `daemon` (gid 1), which `nobody` is not in.
    std::fs::set_permissions(&env.state, std::fs::Permissions::from_mode(0o750)).expect("chmod");
    if crate::support::is_root() {
        std::os::unix::fs::chown(&env.state, None, Some(1)).expect("chgrp");
    } else {
        std::fs::set_permissions(&env.state, std::fs::Permissions::from_mode(0o000))
            .expect("chmod");
    }
    let (code, out, err) =
        cli_unprivileged(&["status", "--config", config.to_str().unwrap()]).await;
    // `replay` took the folder it may not enter for no store: "Nothing to replay", 0.
    let (replay_code, replay_out, replay_err) =
        cli_unprivileged(&["replay", "--failed", "--config", config.to_str().unwrap()]).await;
    std::fs::set_permissions(&env.state, std::fs::Permissions::from_mode(0o750)).expect("chmod");
    assert_eq!(
        replay_code, 77,
        "replay: EX_NOPERM: {replay_out}{replay_err}"
    );
    assert!(!replay_out.contains("Nothing to replay"), "{replay_out}");
    assert_eq!(code, 77, "EX_NOPERM: {out}{err}");
    assert!(err.contains("EACCES: permission denied"), "{err}");
    assert_eq!(err.matches("error:").count(), 1, "printed once: {err}");
    if crate::support::is_root() {
        assert!(
            err.contains("hint: join the group daemon (sudo usermod -a -G daemon $USER"),
            "{err}"
        );
        assert!(err.contains("sudo -u root claid-hotfolder status"), "{err}");
    } else {
        assert!(err.contains("hint: ") && err.contains("sudo -u"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn issue13_replay_writes_the_store_only_as_its_owner() {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file(
        "m.yaml",
        b"images:\n  - input: storage://demo/corrupt-64x48.png\n",
    );
    let config = env.config("", "");
    let (code, output) = run_once(&config).await;
    assert_eq!(code, 2, "{output}");
    let config = config.to_str().unwrap();
    if crate::support::is_root() {
        // As root, a store the service user (here `nobody`) owns is left alone.
        let v1 = env.state.join("v1");
        std::os::unix::fs::chown(&v1, Some(65534), None).expect("chown");
        let before = tree_state(&env.state);
        let (code, out, err) = cli(&["replay", "--failed", "--config", config]).await;
        assert_eq!(code, 77, "{out}{err}");
        assert!(
            err.contains("hint: run it as nobody: sudo -u nobody claid-hotfolder replay"),
            "{err}"
        );
        assert_eq!(tree_state(&env.state), before, "nothing written");
        // A dry run writes nothing, so it needs no ownership: it reads a copy.
        let (code, out, err) = cli(&["replay", "--failed", "--dry-run", "--config", config]).await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("Would requeue 1 job"), "{out}");
        assert_eq!(
            tree_state(&env.state),
            before,
            "nothing written by the dry run"
        );
        std::os::unix::fs::chown(&v1, Some(0), None).expect("chown");
    }
    let (code, out, err) = cli(&["replay", "--failed", "--config", config]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Requeued 1 job"), "{out}");
}

/// Credentials in `api.base_url` are never sent (they went as a second `Authorization` header
/// beside the key's, and the API refused the key): the run goes through with the key alone, and
/// a warning at the start says to remove them, without showing them.
#[tokio::test(flavor = "multi_thread")]
async fn credentials_in_the_base_url_are_not_sent_and_a_warning_says_so() {
    let env = TestEnv::new(Scenario::default()).await;
    let base = env.emulator.base_url();
    let with_secret = base.replace("http://", "http://ops:s3cret-pw@");
    let config = config_edited(&env, false, &[(&base, &with_secret)]);
    env.drop_file("m.yaml", GOOD.as_bytes());
    let (code, output) = run_once(&config).await;
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("`api.base_url` holds credentials (`user:password@`); they are not sent"),
        "{output}"
    );
    assert!(!output.contains("s3cret-pw"), "{output}");
    assert_eq!(env.stats().submits, 2, "{output}");
}

#[tokio::test(flavor = "multi_thread")]
async fn issue13_print_config_round_trips_through_validate_with_credentials_redacted() {
    let env = TestEnv::new(Scenario::default()).await;
    let base = env.emulator.base_url();
    let with_secret = base.replace("http://", "http://ops:s3cret-pw@");
    let config = config_edited(
        &env,
        false,
        &[
            (&base, &with_secret),
            ("shutdown_grace: 5s", "shutdown_grace: 1m 30s"),
        ],
    );
    let text = std::fs::read_to_string(&config).unwrap()
        + "profiles:\n  white:\n    operations: { resizing: { width: 100, fit: bounds } }\n    output: { format: webp }\n";
    std::fs::write(&config, &text).unwrap();
    let (code, printed, err) = cli_with(
        &[
            "run",
            "--print-config",
            "--config",
            config.to_str().unwrap(),
        ],
        &[("CLAID_HOTFOLDER__API__MAX_IN_FLIGHT", "7")],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        !printed.contains("s3cret-pw") && !printed.contains("ops:"),
        "{printed}"
    );
    assert!(printed.contains("http://REDACTED@127.0.0.1:"), "{printed}");
    assert!(
        !printed.contains("test-key"),
        "the API key never appears: {printed}"
    );

    let printed_path = env.dir.path().join("printed.yaml");
    std::fs::write(&printed_path, &printed).unwrap();
    let (code, out, err) = cli(&["validate", printed_path.to_str().unwrap()]).await;
    assert_eq!(code, 0, "validate accepts it back: {out}{err}\n{printed}");

    // The same config, key for key, but for the redacted credentials.
    let mut expected = config::parse_with_env(
        &text,
        &config,
        [(
            "CLAID_HOTFOLDER__API__MAX_IN_FLIGHT".to_owned(),
            "7".to_owned(),
        )],
    )
    .expect("the original is valid");
    expected.api.base_url = config::BaseUrl::Url(
        base.replace("http://", "http://REDACTED@")
            .trim_end_matches('/')
            .to_owned(),
    );
    let reread = config::parse(&printed, &printed_path).expect("the printed one is valid");
    assert_eq!(reread, expected);
    assert_eq!(
        reread.api.max_in_flight.get(),
        7,
        "the environment is applied"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn issue13_run_once_draws_no_bar_when_stderr_is_not_a_terminal() {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file("m.yaml", GOOD.as_bytes());
    let (code, output) = run_once(&env.config("", "")).await;
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("Inbox processed"), "{output}");
    assert!(
        !output.contains('\r') && !output.contains('\x1b'),
        "no bar, no cursor movement, no colour: {output:?}"
    );
}

/// `--help` of the binary and of every subcommand it documents, as snapshots: help that
/// changes must change the snapshot (and the README with it).
#[tokio::test(flavor = "multi_thread")]
async fn issue13_help_texts_match_their_snapshots() {
    let (code, out, _) = cli(&["--help"]).await;
    assert_eq!(code, 0);
    assert_snapshot("help", &out, None);
    for sub in claid_hotfolder::cli::documented_command().get_subcommands() {
        let name = sub.get_name();
        let (code, out, err) = cli(&[name, "--help"]).await;
        assert_eq!(code, 0, "{name}: {err}");
        assert_snapshot(&format!("help-{name}"), &out, None);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn issue13_error_and_message_texts_match_their_snapshots() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    let root = env.dir.path();
    let missing = root.join("nope.yaml");
    let (code, _, err) = cli(&["status", "--config", missing.to_str().unwrap()]).await;
    assert_eq!(code, 64, "{err}");
    assert_snapshot("error-missing-config", &err, Some(root));

    let (code, out, err) = cli(&["status", "--config", config.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{err}");
    assert_snapshot("status-no-store", &out, Some(root));
    assert!(!env.state.exists(), "status created no state folder");

    let (code, out, err) =
        cli(&["replay", "--in-doubt", "--config", config.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{err}");
    assert_snapshot("replay-no-store", &out, Some(root));

    let (code, _, err) = cli(&["replay", "--failed", "--since", "yesterday"]).await;
    assert_eq!(code, 64, "{err}");
    assert_snapshot("error-replay-since", &err, None);
}

/// `validate` reads the files the daemon reads at start, as it reads them: a webhook secret
/// file that is missing, empty or readable by others fails `validate` as it would fail the
/// start (64), and so does a missing API key file; a systemd credential (only the running
/// service can read it) is left to the service, with a note.
#[tokio::test(flavor = "multi_thread")]
async fn validate_reads_the_webhook_secret_and_the_api_key_as_the_start_would() {
    let env = TestEnv::new(Scenario::default()).await;
    let secret = env.dir.path().join("webhook-secret");
    let with_secret = |mode: u32, text: &str| {
        std::fs::write(&secret, text).expect("secret");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(mode)).expect("mode");
        env.config(
            "",
            &format!(
                "webhook:\n  listen: 127.0.0.1:{}\n  secret_file: {}\n",
                crate::support::free_port(),
                secret.display()
            ),
        )
    };
    let config = with_secret(0o600, "a-secret\n");
    let (code, out, err) = cli(&["validate", config.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}{err}");
    // A short secret is accepted (it is set in Claid's dashboard too), with a warning that
    // does not show it.
    assert!(
        out.contains("warning: the webhook secret is only 8 characters long")
            && !out.contains("a-secret"),
        "{out}"
    );

    for (mode, text, needle) in [
        (0o644, "a-secret\n", "chmod 600"),
        (0o600, "  \n", "is empty"),
    ] {
        let config = with_secret(mode, text);
        let (code, out, _) = cli(&["validate", config.to_str().unwrap()]).await;
        assert_eq!(code, exit::USAGE, "{out}");
        assert!(
            out.contains("webhook.secret_file") && out.contains(needle),
            "{out}"
        );
        assert!(
            !out.contains("a-secret"),
            "the secret is never shown: {out}"
        );
    }
    std::fs::remove_file(&secret).expect("rm");
    let (code, out, _) = cli(&["validate", config.to_str().unwrap()]).await;
    assert_eq!(code, exit::USAGE, "{out}");
    assert!(out.contains("ENOENT"), "{out}");

    // A missing API key file; then one that is a systemd credential.
    let text = std::fs::read_to_string(env.config("", "")).expect("config");
    let key_file = env.dir.path().join("api-key");
    let missing = text.replace(
        &key_file.display().to_string(),
        &env.dir.path().join("no-such-key").display().to_string(),
    );
    let path = env.dir.path().join("missing-key.yaml");
    std::fs::write(&path, missing).expect("config");
    let (code, out, _) = cli(&["validate", path.to_str().unwrap()]).await;
    assert_eq!(code, exit::USAGE, "{out}");
    assert!(
        out.contains("API key problem")
            && out.contains("`api.api_key_file`: cannot read")
            && out.contains("no-such-key: ENOENT"),
        "{out}"
    );
    // A key file that is a FIFO is refused at once (the open waited for a writer for ever).
    let fifo = env.dir.path().join("key-fifo");
    crate::support::mkfifo(&fifo);
    let piped = text.replace(&key_file.display().to_string(), &fifo.display().to_string());
    let path = env.dir.path().join("fifo-key.yaml");
    std::fs::write(&path, piped).expect("config");
    let (code, out, _) = tokio::time::timeout(
        Duration::from_secs(30),
        cli(&["validate", path.to_str().unwrap()]),
    )
    .await
    .expect("validate ends");
    assert_eq!(code, exit::USAGE, "{out}");
    assert!(out.contains("FIFO"), "{out}");
    // A key file every user may read is warned about, by `validate` and at the start, never
    // showing the key.
    let config = env.config("", "");
    let key = std::fs::read_to_string(&key_file).expect("key");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).expect("mode");
    let (code, out, _) = cli(&["validate", config.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warning: `api.api_key_file`") && out.contains("chmod o-rwx"),
        "{out}"
    );
    assert!(!out.contains(key.trim()), "{out}");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("Every user of this machine may read the API key file (mode 0644)"),
        "{stderr}"
    );
    assert!(!stderr.contains(key.trim()), "{stderr}");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).expect("mode");
    let (_, out, _) = cli(&["validate", config.to_str().unwrap()]).await;
    assert!(!out.contains("api_key_file"), "no warning at 0600: {out}");
    let credential = text.replace(
        &key_file.display().to_string(),
        "/run/credentials/claid-hotfolder.service/claid-api-key",
    );
    std::fs::write(&path, credential).expect("config");
    let (code, out, _) = cli(&["validate", path.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("systemd credential"), "{out}");

    // No key at all (no file, no CLAID_API_KEY) for a real API: the start refuses it, and so
    // does `validate` now (it said "ok").
    let keyless: String = text
        .lines()
        .filter(|line| !line.contains("api_key_file"))
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(&path, keyless).expect("config");
    let (code, out, _) = cli(&["validate", path.to_str().unwrap()]).await;
    assert_eq!(code, exit::USAGE, "{out}");
    assert!(out.contains("no API key"), "{out}");

    // A dashboard token every user may read is warned about like the API key.
    let token = env.dir.path().join("token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").expect("token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("mode");
    let config = env.config(
        "",
        &format!(
            "web:\n  listen: 127.0.0.1:{}\n  token_file: {}\n",
            crate::support::free_port(),
            token.display()
        ),
    );
    let (code, out, _) = cli(&["validate", config.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warning: `web.token_file`") && out.contains("chmod o-rwx"),
        "{out}"
    );
}

/// `validate` reads the dashboard's token and users files and the alert sinks' URL files as the
/// start does: each config the daemon would refuse to start is refused by `validate` too,
/// with the same exit code (64: what was configured is wrong), naming the file; the URL in an
/// alert file is never printed.
/// An `admin.socket` that names a regular file is refused by `validate` as the start refuses
/// it (64), and the file is left as it is (`validate` said ok, then the unit stayed down).
#[tokio::test(flavor = "multi_thread")]
async fn validate_refuses_an_admin_socket_that_names_a_file_as_the_start_would() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    std::fs::write(env.socket(), b"notes\n").expect("a file there");
    let (code, out, err) = cli(&["validate", config.to_str().unwrap()]).await;
    assert_eq!(code, 64, "{out}{err}");
    assert!(
        out.contains("admin problem") && out.contains("which is not a socket"),
        "{out}"
    );
    let (code, out, err) = cli(&["run", "--once", "--config", config.to_str().unwrap()]).await;
    assert_eq!(code, 64, "{out}{err}");
    assert_eq!(std::fs::read(env.socket()).expect("kept"), b"notes\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_reads_the_dashboard_and_alert_files_as_the_start_would() {
    let env = TestEnv::new(Scenario::default()).await;
    let dir = env.dir.path();
    std::fs::write(dir.join("short-token"), "abc123\n").expect("token");
    std::fs::write(dir.join("ftp-url"), "ftp://hooks.example/secret-path\n").expect("url");
    std::fs::write(dir.join("good-url"), "https://hooks.example/secret-path\n").expect("url");
    let web = |key: &str, file: &str| {
        format!(
            "web:\n  listen: 127.0.0.1:{}\n  {key}: {}\n",
            crate::support::free_port(),
            dir.join(file).display()
        )
    };
    let alert = |file: &str| {
        format!(
            "alerts:\n  - {{ url_file: {} }}\n",
            dir.join(file).display()
        )
    };
    for (extra, needles) in [
        (
            web("token_file", "short-token"),
            vec!["dashboard problem", "short-token"],
        ),
        (
            web("users_file", "no-users"),
            vec!["dashboard problem", "no-users", "ENOENT"],
        ),
        (alert("no-url"), vec!["alert problem", "no-url", "ENOENT"]),
        (alert("ftp-url"), vec!["alert problem", "ftp-url"]),
    ] {
        let config = env.config("", &extra);
        let (code, out, err) = cli(&["validate", config.to_str().unwrap()]).await;
        assert_eq!(code, exit::USAGE, "{extra}{out}{err}");
        for needle in needles {
            assert!(out.contains(needle), "{needle}: {out}");
        }
        assert!(
            !out.contains("secret-path"),
            "the URL is never shown: {out}"
        );
        assert!(!out.contains("abc123"), "the token is never shown: {out}");
        // The start refuses it with the same code.
        let (code, stderr) = env.run_once(&config).await;
        assert_eq!(code, exit::USAGE, "{stderr}");
    }
    let config = env.config("", &alert("good-url"));
    let (code, out, err) = cli(&["validate", config.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}{err}");
    // Every bad file at once is told at once (the first alone was, one fix and run per file).
    let config = env.config(
        "",
        &format!(
            "{}alerts:\n  - {{ name: one, url_file: {} }}\n  - {{ name: two, url_file: {} }}\nwebhook:\n  listen: 127.0.0.1:{}\n  secret_file: {}\n",
            web("token_file", "no-token"),
            dir.join("no-url").display(),
            dir.join("ftp-url").display(),
            crate::support::free_port(),
            dir.join("no-secret").display()
        ),
    );
    let (code, out, err) = cli(&["validate", config.to_str().unwrap()]).await;
    assert_eq!(
        code,
        exit::USAGE,
        "the first one's (a missing secret file): {out}{err}"
    );
    for needle in [
        "webhook problem",
        "no-secret",
        "dashboard problem",
        "no-token",
        "no-url",
        "ftp-url",
    ] {
        assert!(out.contains(needle), "{needle}: {out}");
    }
    assert_eq!(out.matches("alert problem").count(), 2, "{out}");
}

/// A command whose output pipe closes early stops quietly (141, as the shell's tools do
/// under SIGPIPE), never with a panic.
#[tokio::test(flavor = "multi_thread")]
async fn a_closed_output_pipe_ends_a_command_quietly() {
    let dir = tempfile::tempdir().expect("dir");
    let manifest = dir.path().join("m.yaml");
    std::fs::write(&manifest, GOOD).expect("manifest");
    // Enough lines that the pipe's buffer fills after the reader is gone.
    let args: Vec<String> = std::iter::once("validate".to_owned())
        .chain(std::iter::repeat_n(manifest.display().to_string(), 20_000))
        .collect();
    let mut child = tokio::process::Command::new(crate::support::bin())
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let out = child.wait_with_output().await.expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `validate` notes an `api.unreachable_timeout` shorter than `api.request_timeout`: `run
/// --once` would give up on a call still waiting (a slow upload) that would have finished.
#[tokio::test(flavor = "multi_thread")]
async fn validate_notes_an_unreachable_timeout_shorter_than_a_request() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("unreachable_timeout: 5s\nrequest_timeout: 1m", "");
    let (code, out, err) = cli(&["validate", config.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("note: api.unreachable_timeout (5s) is shorter than api.request_timeout (1m)"),
        "{out}"
    );
    let config = env.config("unreachable_timeout: 2m\nrequest_timeout: 30s", "");
    let (code, out, _) = cli(&["validate", config.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("unreachable_timeout"), "{out}");
}

/// Names come from files: `status` and `jobs` show control characters escaped, as the logs
/// do (a raw ESC recoloured the terminal, a newline broke the table). `jobs --manifest` takes
/// the manifest's path through the inbox too, and a manifest the store does not know is an
/// error naming the fix instead of "0 jobs".
#[tokio::test(flavor = "multi_thread")]
async fn status_and_jobs_escape_names_and_jobs_manifest_says_when_it_is_unknown() {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file("esc\x1b[31mred.yaml", GOOD.as_bytes());
    let config = env.config("", "");
    let cfg = config.to_str().unwrap();
    let (code, output) = run_once(&config).await;
    assert_eq!(code, 0, "{output}");
    for args in [&["status"][..], &["jobs"][..]] {
        let (code, out, err) = cli(&[args, &["--config", cfg]].concat()).await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(!out.contains('\x1b'), "{args:?}: {out:?}");
        assert!(out.contains("esc\\x1b[31mred.yaml"), "{args:?}: {out}");
    }
    let through_inbox = env.inbox.join("esc\x1b[31mred.yaml");
    let (code, out, err) = cli(&[
        "jobs",
        "--manifest",
        through_inbox.to_str().unwrap(),
        "--config",
        cfg,
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.ends_with("\n2 jobs\n"), "{out}");
    let (code, out, err) = cli(&["jobs", "--manifest", "nope.yaml", "--config", cfg]).await;
    assert_eq!(code, 64, "{out}{err}");
    assert!(out.is_empty(), "no table before the error: {out}");
    assert!(
        err.contains("no manifest `nope.yaml` in the store (give its path relative to the inbox"),
        "{err}"
    );
    let (code, out, err) = cli(&[
        "jobs",
        "--manifest",
        "esc\x1b[31mred.yaml",
        "--state",
        "failed",
        "--config",
        cfg,
    ])
    .await;
    assert_eq!((code, out.ends_with("\n0 jobs\n")), (0, true), "{out}{err}");
}

/// A subfolder of the inbox the daemon's user cannot read: `run --once` processes the rest and
/// exits 74 naming the folder and the fix (it exited 0, "every image done", with the folder's
/// manifests never seen). Run as an unprivileged user (root reads every folder).
#[tokio::test(flavor = "multi_thread")]
async fn run_once_exits_74_naming_an_inbox_folder_it_could_not_read() {
    if !crate::support::is_root() {
        return;
    }
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    env.open_to_others();
    for dir in [
        &env.inbox,
        &env.outbox,
        &env.archive,
        &env.rejected,
        &env.state,
    ] {
        std::fs::create_dir_all(dir).expect("dir");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    }
    env.drop_file("ok.yaml", GOOD.as_bytes());
    std::fs::set_permissions(
        env.inbox.join("ok.yaml"),
        std::fs::Permissions::from_mode(0o666),
    )
    .expect("chmod");
    env.drop_file("locked/x.yaml", GOOD.as_bytes());
    std::fs::set_permissions(
        env.inbox.join("locked"),
        std::fs::Permissions::from_mode(0o700),
    )
    .expect("chmod");
    let (code, out, err) =
        cli_unprivileged(&["run", "--once", "--config", config.to_str().unwrap()]).await;
    assert_eq!(code, 74, "{out}{err}");
    assert!(
        err.contains("Inbox folders could not be read") && err.contains("locked"),
        "{err}"
    );
    assert!(
        env.outbox.join("ok.report.json").is_file(),
        "the rest is processed: {err}"
    );
}

/// A second daemon's config on the same inbox as `config`: its own outbox, archive, rejected
/// and state folders (under the returned folder) and its own admin socket.
fn second_daemon_config(env: &TestEnv, config: &Path) -> (tempfile::TempDir, PathBuf) {
    let outside = tempfile::tempdir().expect("tempdir");
    let mut second = std::fs::read_to_string(config).expect("config");
    for folder in ["outbox", "archive", "rejected", "state"] {
        let mine = env.dir.path().join(folder).display().to_string();
        let theirs = outside.path().join(folder);
        std::fs::create_dir_all(&theirs).expect("folder");
        second = second.replace(
            &format!("{folder}: {mine}"),
            &format!("{folder}: {}", theirs.display()),
        );
    }
    let second_config = outside.path().join("second.yaml");
    std::fs::write(&second_config, second.replace("admin.sock", "admin-2.sock")).expect("config");
    (outside, second_config)
}

/// The inbox's lock file deleted (a cleanup of dot files) or the inbox folder replaced while
/// a daemon runs: the daemon claims the inbox again at its next rescan, so a second daemon
/// started on it afterwards is still refused (75) instead of taking in, and billing, every
/// drop a second time.
#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_inbox_lock_or_a_replaced_inbox_is_claimed_again() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    let mut daemon = env.spawn_daemon(&config, 0);
    crate::support::wait_until("the first daemon is ready", DEADLINE, || {
        env.daemon_log(0).contains("Ready")
    })
    .await;
    let lock = env.inbox.join(".claid-hotfolder.lock");
    let (_outside, second_config) = second_daemon_config(&env, &config);
    for how in ["the lock file deleted", "the inbox folder replaced"] {
        if how == "the lock file deleted" {
            std::fs::remove_file(&lock).expect("rm lock");
        } else {
            let old = env.dir.path().join("inbox.old");
            std::fs::rename(&env.inbox, &old).expect("mv inbox");
            std::fs::create_dir(&env.inbox).expect("mkdir inbox");
        }
        crate::support::wait_until("the inbox claimed again", DEADLINE, || {
            lock.is_file()
                && std::fs::read_to_string(&lock)
                    .is_ok_and(|t| t.contains(&format!("PID {}", daemon.id().unwrap_or(0))))
        })
        .await;
        let (code, out, err) =
            cli(&["run", "--once", "--config", second_config.to_str().unwrap()]).await;
        assert_eq!(code, 75, "{how}: {out}{err}");
        assert!(err.contains("another daemon (PID "), "{how}: {err}");
    }
    crate::support::stop(&mut daemon).await;
    assert!(env.daemon_log(0).contains("claimed the inbox again"));
}

/// The inbox's lock file deleted while a daemon runs, with a long `watch.rescan`: a second
/// daemon started before the first one makes the file again is still refused (75), since the
/// first one also holds a lock on the inbox folder itself, which no deleted file lifts.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_daemon_is_refused_even_before_a_deleted_inbox_lock_is_made_again() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, text.replace("rescan: 500ms", "rescan: 1h")).expect("config");
    let mut daemon = env.spawn_daemon(&config, 0);
    crate::support::wait_until("the first daemon is ready", DEADLINE, || {
        env.daemon_log(0).contains("Ready")
    })
    .await;
    // The start names the store's id (which names its part of a staging prefix).
    assert!(
        env.daemon_log(0).contains("Opened the job store")
            && env.daemon_log(0).contains("store_id="),
        "{}",
        env.daemon_log(0)
    );
    let lock = env.inbox.join(".claid-hotfolder.lock");
    std::fs::remove_file(&lock).expect("rm lock");
    let (outside, second_config) = second_daemon_config(&env, &config);
    // Nothing is dropped before the second daemon runs: a drop makes the first one scan, and
    // a scan claims the inbox again (the lock file could be back before the second looks).
    let (code, out, err) =
        cli(&["run", "--once", "--config", second_config.to_str().unwrap()]).await;
    assert_eq!(code, 75, "{out}{err}");
    assert!(
        err.contains(
            "another daemon (PID unknown: its lock file .claid-hotfolder.lock was deleted)"
        ),
        "{err}"
    );
    assert!(
        !lock.exists(),
        "the first daemon has not made its lock again yet"
    );
    env.drop_file("m.yaml", GOOD.as_bytes());
    // The first daemon alone runs the drop.
    crate::support::wait_until("the drop ran", DEADLINE, || {
        env.archive.join("m.yaml").is_file()
    })
    .await;
    assert_eq!(env.stats().submits, 2);
    assert!(!outside.path().join("archive/m.yaml").exists());
    crate::support::stop(&mut daemon).await;
}

/// Two daemons must not watch overlapping inboxes (each would take in, and bill, the same
/// manifests): with a daemon running, another one (its own state, outbox and socket) on a
/// folder inside that inbox, on the same inbox, or on a folder holding it is refused (75),
/// naming the running one's folder and PID; nothing is submitted twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_daemon_on_an_overlapping_inbox_is_refused() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    // A link planted under the lock's name is never followed (its target was overwritten).
    let victim = env.dir.path().join("victim.txt");
    std::fs::write(&victim, "keep me\n").expect("victim");
    std::fs::create_dir_all(&env.inbox).expect("inbox");
    std::os::unix::fs::symlink(&victim, env.inbox.join(".claid-hotfolder.lock")).expect("link");
    let mut daemon = env.spawn_daemon(&config, 0);
    crate::support::wait_until("the first daemon is ready", DEADLINE, || {
        env.daemon_log(0).contains("Ready")
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "keep me\n"
    );
    let text = std::fs::read_to_string(&config).expect("config");
    let outside = tempfile::tempdir().expect("tempdir");
    let other = outside.path().to_path_buf();
    let inbox = env.inbox.display().to_string();
    for (n, (their_inbox, relation)) in [
        (env.inbox.join("team"), "which holds this inbox"),
        (env.inbox.clone(), "the same inbox"),
        (env.dir.path().to_path_buf(), "which is inside this inbox"),
    ]
    .into_iter()
    .enumerate()
    {
        std::fs::create_dir_all(&their_inbox).expect("inbox");
        let mut edited = text.clone();
        for folder in ["outbox", "archive", "rejected", "state"] {
            let mine = env.dir.path().join(folder).display().to_string();
            let theirs = other.join(format!("{n}-{folder}"));
            std::fs::create_dir_all(&theirs).expect("folder");
            edited = edited.replace(
                &format!("{folder}: {mine}"),
                &format!("{folder}: {}", theirs.display()),
            );
        }
        edited = edited
            .replace(
                &format!("inbox: {inbox}\n"),
                &format!("inbox: {}\n", their_inbox.display()),
            )
            .replace("admin.sock", &format!("admin-{n}.sock"));
        let second = other.join(format!("config-{n}.yaml"));
        std::fs::write(&second, edited).expect("config");
        let (code, out, err) = cli(&["run", "--once", "--config", second.to_str().unwrap()]).await;
        assert_eq!(code, 75, "{relation}: {out}{err}");
        assert!(
            err.contains("another daemon (PID ") && err.contains(relation),
            "{relation}: {err}"
        );
    }
    crate::support::stop(&mut daemon).await;

    // A folder created at the start through a symlinked parent that lands in the inbox is
    // refused (64) once it exists: compared as written it looked apart.
    let link = outside.path().join("to-inbox");
    std::os::unix::fs::symlink(&env.inbox, &link).expect("link");
    let archive = env.archive.display().to_string();
    let edited = text
        .replace(
            &format!("archive: {archive}"),
            &format!("archive: {}", link.join("arc").display()),
        )
        .replace("folders:\n", "folders:\n  create: true\n");
    let path = outside.path().join("linked.yaml");
    std::fs::write(&path, edited).expect("config");
    let (code, out, err) = cli(&["run", "--once", "--config", path.to_str().unwrap()]).await;
    assert_eq!(code, 64, "{out}{err}");
    assert!(
        err.contains("folders.archive") && err.contains("inside the inbox"),
        "{err}"
    );
}

/// A folder plainly inside the inbox (or the inbox itself), both existing, is told so: the
/// message blamed a bind mount that was not there, since the check by (device, inode) ran
/// before the one by path.
#[tokio::test(flavor = "multi_thread")]
async fn a_folder_plainly_inside_the_inbox_is_not_blamed_on_a_bind_mount() {
    let env = TestEnv::new(Scenario::default()).await;
    let inside = env.inbox.join("out");
    std::fs::create_dir_all(&inside).expect("folder");
    for (place, told) in [
        (&inside, "is inside the inbox"),
        (&env.inbox, "is the inbox"),
    ] {
        let config = env.config("", "");
        let text = std::fs::read_to_string(&config).expect("config").replace(
            &format!("outbox: {}", env.outbox.display()),
            &format!("outbox: {}", place.display()),
        );
        std::fs::write(&config, text).expect("config");
        let (code, out, err) = cli(&["validate", config.to_str().unwrap()]).await;
        assert_eq!(code, 65, "{out}{err}");
        let said = format!("{out}{err}");
        assert!(
            said.contains("folders.outbox") && said.contains(told),
            "{said}"
        );
        assert!(!said.contains("bind mount"), "{said}");
    }
}

/// The inbox bind-mounted at a second path: an archive (or outbox, rejected) folder under that
/// path is inside the inbox though no comparison of names says so. Refused by `validate` (65)
/// and at the start (64); it was accepted, and each archived manifest ran again, billed, at an
/// ever deeper path (36 submits of one image in 10 s).
#[tokio::test(flavor = "multi_thread")]
async fn a_folder_inside_the_inbox_through_a_bind_mount_is_refused() {
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let env = TestEnv::new(Scenario::default()).await;
    let alias = env.dir.path().join("alias");
    std::fs::create_dir_all(&alias).expect("mount point");
    let mounted = std::process::Command::new("mount")
        .arg("--bind")
        .arg(&env.inbox)
        .arg(&alias)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("bind mount: skipped, it cannot be made here");
        return;
    }
    let _unmount = Unmount(alias.clone());
    std::fs::create_dir_all(alias.join("arch")).expect("archive");
    let config = env.config("", "");
    let text = std::fs::read_to_string(&config).expect("config").replace(
        &format!("archive: {}", env.archive.display()),
        &format!("archive: {}", alias.join("arch").display()),
    );
    std::fs::write(&config, text).expect("config");
    let (code, out, err) = cli(&["validate", config.to_str().unwrap()]).await;
    assert_eq!(code, 65, "{out}{err}");
    let said = format!("{out}{err}");
    assert!(
        said.contains("folders.archive")
            && said.contains("inside the inbox")
            && said.contains("bind mount"),
        "{said}"
    );
    let (code, out, err) = cli(&["run", "--once", "--config", config.to_str().unwrap()]).await;
    assert_eq!(code, 64, "{out}{err}");
    assert!(err.contains("folders.archive"), "{err}");
    assert_eq!(env.stats().submits, 0);
}

/// `status` without a daemon reads a copy of the store made in the temporary folder; when
/// `TMPDIR` points nowhere, the error says that the folder comes from `TMPDIR` and how to fix
/// it (it named only a random path under it).
#[tokio::test(flavor = "multi_thread")]
async fn status_names_tmpdir_when_the_temporary_folder_is_unusable() {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file("m.yaml", GOOD.as_bytes());
    let config = env.config("", "");
    let cfg = config.to_str().unwrap();
    let (code, output) = run_once(&config).await;
    assert_eq!(code, 0, "{output}");
    let nowhere = env.dir.path().join("no-such-tmp");
    let (code, out, err) = crate::support::cli_with(
        &["status", "--config", cfg],
        &[("TMPDIR", nowhere.to_str().unwrap())],
    )
    .await;
    assert_eq!(code, 74, "{out}{err}");
    assert!(
        err.contains(nowhere.to_str().unwrap())
            && err.contains("$TMPDIR")
            && err.contains("set TMPDIR to a writable folder"),
        "{err}"
    );
}

/// A temporary folder too full for the store's copy: the error names the temporary folder and
/// TMPDIR (it named the store, which was not full). The full disk is made with strace's fault
/// injection on the copy's writes.
#[tokio::test(flavor = "multi_thread")]
async fn status_names_tmpdir_when_the_temporary_folder_is_full() {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file("m.yaml", GOOD.as_bytes());
    let config = env.config("", "");
    let (code, output) = run_once(&config).await;
    assert_eq!(code, 0, "{output}");
    let out = tokio::process::Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-o",
            "/dev/null",
            "-e",
            "trace=copy_file_range",
        ])
        .args(["-e", "inject=copy_file_range:error=ENOSPC", "--"])
        .arg(crate::support::bin())
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .await
        .expect("strace runs (.ci/run installs it)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(74), "{err}");
    assert!(
        err.contains("that is the temporary folder")
            && err.contains("set TMPDIR to a writable folder"),
        "{err}"
    );
}

/// `plan` counts the API calls the way the daemon will make them: URL inputs (and those of
/// configured storages) in batches (a canary of two, then batches of up to a quarter of
/// `max_in_flight`), inputs of a storage connector the config does not name as single
/// submits, single submits with polls when batching is off, and no routine polls with
/// webhooks. The daemon then makes exactly the submits the plan counted.
#[tokio::test(flavor = "multi_thread")]
async fn plan_counts_batches_single_submits_and_webhook_polls_as_the_daemon_makes_them() {
    let served = tempfile::tempdir().expect("static dir");
    let env = TestEnv::new(Scenario::default().static_dir(served.path())).await;
    let mut text = String::from("images:\n");
    for i in 0..6 {
        std::fs::write(served.path().join(format!("u{i}.png")), png(64, 48)).expect("image");
        text.push_str(&format!(
            "  - input: http://{}/_static/u{i}.png\n",
            env.emulator.addr()
        ));
    }
    for i in 0..4 {
        text.push_str(&format!("  - input: storage://demo/p{i}-64x48.png\n"));
    }
    let manifest = env.dir.path().join("ten.yaml");
    std::fs::write(&manifest, &text).expect("manifest");
    let webhook = format!(
        "webhook:\n  listen: 127.0.0.1:9\n  secret_file: {}\n",
        env.dir.path().join("secret").display()
    );
    std::fs::write(
        env.dir.path().join("secret"),
        "a-secret-long-enough-for-the-test\n",
    )
    .expect("secret");
    for (api, extra, expected) in [
        (
            "",
            "",
            "at least 2 batch submits (up to 8 images each) + 4 single submits (inputs a batch does not take: URLs with a query string or fragment, or no file name, or a name that starts with a dot; storage connectors that are not in `storages`; storage outputs renamed) + a few polls per batch and about 4 for the single submits",
        ),
        (
            "batch: { max_images: 1 }",
            "",
            "10 single submits + about 12 polls",
        ),
        (
            "",
            webhook.as_str(),
            "+ 4 single submits (inputs a batch does not take: URLs with a query string or fragment, or no file name, or a name that starts with a dot; storage connectors that are not in `storages`; storage outputs renamed) + polls only for results whose webhook is late",
        ),
    ] {
        let config = env.config(api, extra);
        let (code, out, err) = cli(&[
            "plan",
            manifest.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ])
        .await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains(expected), "{api}{extra}: {out}");
    }
    env.drop_file("ten.yaml", text.as_bytes());
    let (code, stderr) = env.run_once(&env.config("", "")).await;
    assert_eq!(code, 0, "{stderr}");
    let stats = env.stats();
    assert_eq!(stats.batch_images, 6, "the URL inputs went in batches");
    assert_eq!(
        stats.batch_submits, 2,
        "a canary of two, then one batch of four"
    );
    assert_eq!(stats.submits, 4, "the demo connector's inputs went alone");
}

/// `replay --dry-run` lists what it would requeue, says which were done (sending those again
/// is billed again), and changes nothing: the jobs stay done and a later run bills nothing.
#[tokio::test(flavor = "multi_thread")]
async fn replay_dry_run_lists_the_jobs_and_the_billed_ones_and_changes_nothing() {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file("m.yaml", GOOD.as_bytes());
    let config = env.config("", "");
    let (code, output) = run_once(&config).await;
    assert_eq!(code, 0, "{output}");
    let config = config.to_str().unwrap();
    let (code, out, err) = cli(&[
        "replay",
        "--manifest",
        "m.yaml",
        "--dry-run",
        "--config",
        config,
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("Would requeue 2 jobs (2 of them done: sending those again is billed again)"),
        "{out}"
    );
    assert!(
        out.contains("storage://demo/a-64x48.png -> m/a-64x48.jpg"),
        "{out}"
    );
    let submits = env.stats().submits + env.stats().batch_submits;
    let (code, output) = run_once(std::path::Path::new(config)).await;
    assert_eq!(code, 0, "{output}");
    assert_eq!(
        env.stats().submits + env.stats().batch_submits,
        submits,
        "nothing was requeued"
    );
}

/// A manifest whose name holds a newline is shown escaped (`new\nline.yaml`) by `status` and
/// the log; `replay --manifest` takes that form as well as the name itself (it answered "no
/// manifest in the store" to the name as shown).
#[tokio::test(flavor = "multi_thread")]
async fn replay_takes_a_manifest_name_as_status_escapes_it() {
    let env = TestEnv::new(Scenario::default()).await;
    env.drop_file("new\nline.yaml", GOOD.as_bytes());
    let config = env.config("", "");
    let (code, output) = run_once(&config).await;
    assert_eq!(code, 0, "{output}");
    let config = config.to_str().unwrap();
    let (code, out, err) = cli(&["status", "--config", config]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("new\\nline.yaml"), "shown escaped: {out}");
    for given in ["new\\nline.yaml", "new\nline.yaml"] {
        let (code, out, err) = cli(&[
            "replay",
            "--manifest",
            given,
            "--dry-run",
            "--config",
            config,
        ])
        .await;
        assert_eq!(code, 0, "{given:?}: {out}{err}");
        assert!(out.contains("Would requeue 2 jobs"), "{given:?}: {out}");
    }
}

/// SIGTERM during `run --once` exits 75 and says why, with the count of unfinished jobs that
/// resume at the next run; the next run finishes them. SIGHUP (its terminal went away: an SSH
/// session that dropped) is the same stop (it ended the process at once, exit 129, and cut
/// off what Claid was working on, in doubt at the next run).
#[tokio::test(flavor = "multi_thread")]
async fn run_once_stopped_by_sigterm_exits_75_saying_what_resumes() {
    use claid_hotfolder::emulator::Latency;
    for sig in ["-TERM", "-HUP"] {
        let env =
            TestEnv::new(Scenario::default().latency(Latency::Fixed(Duration::from_secs(3)))).await;
        env.drop_file("m.yaml", GOOD.as_bytes());
        let config = env.config("", "");
        let child = tokio::process::Command::new(crate::support::bin())
            .args(["run", "--once", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run --once starts");
        crate::support::wait_until("a task is submitted", DEADLINE, || {
            env.stats().submits + env.stats().batch_submits > 0
        })
        .await;
        crate::support::signal(&child, sig);
        let out = child.wait_with_output().await.expect("run --once ends");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(75), "{sig}: {stderr}");
        let line = stderr
            .lines()
            .find(|l| l.contains("stopped by a signal"))
            .unwrap_or_else(|| panic!("{sig}: the stop is explained:\n{stderr}"));
        assert!(line.contains("unfinished=2"), "{sig}: {line}");
        let (code, output) = run_once(&config).await;
        assert_eq!(code, 0, "{sig}: the next run finishes them: {output}");
        let report = env.report("m");
        assert_eq!(
            report["in_doubt"], 0,
            "{sig}: nothing cut off in doubt: {report:#}"
        );
    }
}

/// `validate` reads a folder recipe (`.claid.yaml`) as a recipe, not as a manifest missing
/// its `images`: a good one is ok, a bad one's problems carry its lines.
#[tokio::test(flavor = "multi_thread")]
async fn validate_checks_a_folder_recipe_as_a_recipe() {
    let env = TestEnv::new(Scenario::default()).await;
    let good = env.drop_file(
        "studio/.claid.yaml",
        b"operations: { resizing: { width: 64, height: 64 } }\noutput: { format: png }\n",
    );
    let (code, out, err) = cli(&["validate", good.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok (folder recipe"), "{out}");
    let bad = env.drop_file(
        "bad/.claid.yaml",
        b"operations:\n  resizing: { width: -3 }\nimages: []\n",
    );
    let (code, out, err) = cli(&["validate", bad.to_str().unwrap()]).await;
    assert_eq!(code, 65, "{out}{err}");
    assert!(out.contains("folder recipe with 2 problems"), "{out}");
    assert!(out.contains("line 2:") && out.contains("line 3:"), "{out}");
    assert!(!out.contains("missing images"), "{out}");
}

/// `validate` refuses a config whose state folder is a file (the start would fail), and one
/// that is not YAML is told as a config, not first as a manifest.
#[tokio::test(flavor = "multi_thread")]
async fn validate_refuses_a_file_for_the_state_folder_and_reads_broken_configs_as_configs() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    let text = std::fs::read_to_string(&config).unwrap();
    let state_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("state:"))
        .expect("a state line");
    let state = env.dir.path().join("state-is-a-file");
    std::fs::write(&state, b"not a folder").unwrap();
    let filed = env.dir.path().join("filed.yaml");
    std::fs::write(
        &filed,
        text.replace(state_line, &format!("  state: {}", state.display())),
    )
    .unwrap();
    let (code, out, err) = cli(&["validate", filed.to_str().unwrap()]).await;
    assert_eq!(code, 65, "{out}{err}");
    assert!(out.contains("folders.state"), "{out}");

    // A state folder under that file can never be made: told, naming the file, and the
    // daemon does not start.
    let under = env.dir.path().join("under.yaml");
    std::fs::write(
        &under,
        text.replace(
            state_line,
            &format!("  state: {}", state.join("store").display()),
        ),
    )
    .unwrap();
    let (code, out, err) = cli(&["validate", under.to_str().unwrap()]).await;
    assert_eq!(code, 65, "{out}{err}");
    assert!(
        out.contains("folders.state") && out.contains("above it is a file"),
        "{out}"
    );
    let (code, out, err) = cli(&["run", "--once", "--config", under.to_str().unwrap()]).await;
    assert_eq!(code, 73, "EX_CANTCREAT: {out}{err}");
    assert!(err.contains("above it is a file"), "{out}{err}");

    let broken = env.dir.path().join("broken.yaml");
    std::fs::write(&broken, format!("{text}admin:\n  socket: /tmp/x.sock\n")).unwrap();
    let (code, out, err) = cli(&["validate", broken.to_str().unwrap()]).await;
    assert_eq!(code, 65, "{out}{err}");
    assert!(!out.contains("As a manifest"), "{out}");

    // A config padded past a manifest's size limit (sparse: no disk used) is still a config,
    // refused for the config's own limit, not "over limits.max_manifest_bytes".
    let padded = env.dir.path().join("padded.yaml");
    std::fs::write(&padded, &text).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&padded)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let (code, out, err) = cli(&["validate", padded.to_str().unwrap()]).await;
    assert_eq!(code, 65, "{out}{err}");
    assert!(out.contains("larger than 1024 KiB"), "{out}{err}");
    assert!(!out.contains("max_manifest_bytes"), "{out}{err}");
}

/// An API that answers every call with a redirect (the API moved) is named as such, with where
/// it points, and `run --once` stops at once with 64 (a config to correct), not after the
/// unreachable timeout with 69; the redirect is never followed, so nothing is sent twice.
#[tokio::test(flavor = "multi_thread")]
async fn an_api_answering_with_a_redirect_stops_run_once_with_64_naming_where_it_points() {
    let env = TestEnv::new(Scenario::default()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    tokio::spawn(async move {
        let moved = move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async {
                (
                    axum::http::StatusCode::PERMANENT_REDIRECT,
                    [(
                        axum::http::header::LOCATION,
                        "https://api.example/v2/image/edit",
                    )],
                )
            }
        };
        let _ = axum::serve(listener, axum::Router::new().fallback(moved)).await;
    });
    let config = env.config("unreachable_timeout: 60s", "");
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace(&env.emulator.base_url(), &format!("http://{addr}/v1"));
    std::fs::write(&config, text).expect("config");
    env.drop_file(
        "m.yaml",
        format!(
            "images:\n  - {}/demo/a-64x48.png\n",
            env.emulator.base_url().trim_end_matches("/v1")
        )
        .as_bytes(),
    );
    // (With the old code: 69 once the 60 s unreachable timeout had passed.)
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("redirect") && stderr.contains("https://api.example/v2/image/edit"),
        "{stderr}"
    );
    assert!(stderr.contains("api.base_url"), "{stderr}");
    assert!(calls.load(std::sync::atomic::Ordering::SeqCst) >= 1);
}

/// `api.base_url` without its version (`http://host:port` for `…/v1`): every submit meets a
/// router's 404. That is the config's, not each image's: `run --once` stops with 64 naming
/// `api.base_url`, and the images stay in the store for the next run (they were failed as
/// `claid-not-found`, the manifest archived with every image failed).
#[tokio::test(flavor = "multi_thread")]
async fn a_base_url_without_its_version_stops_run_once_naming_it_and_fails_no_image() {
    let env = TestEnv::new(Scenario::default()).await;
    let base = env.emulator.base_url();
    let origin = base.trim_end_matches("/v1").to_owned();
    let config = env.config("", "");
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace(&format!("base_url: {base}"), &format!("base_url: {origin}"));
    std::fs::write(&config, text).expect("config");
    env.drop_file(
        "m.yaml",
        format!("images:\n  - {origin}/demo/a-64x48.png\n  - {origin}/demo/b-64x48.png\n")
            .as_bytes(),
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("no such endpoint") && stderr.contains("api.base_url"),
        "{stderr}"
    );
    assert!(!stderr.contains("Job failed"), "{stderr}");
    assert!(
        env.inbox.join("m.yaml").exists(),
        "the manifest waits for the next run"
    );
}

/// A daemon that takes the connection on its admin socket and never answers (stuck) does not
/// hang `status` for ever: it ends with 69 after a bounded wait, saying what to look at.
#[tokio::test(flavor = "multi_thread")]
async fn status_ends_with_69_when_the_admin_socket_takes_the_connection_and_never_answers() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "");
    let listener = tokio::net::UnixListener::bind(env.socket()).expect("a mute socket");
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            open.push(stream);
        }
    });
    let (code, out, err) =
        crate::support::cli(&["status", "--config", config.to_str().expect("utf-8")]).await;
    held.abort();
    assert_eq!(code, 69, "{out}{err}");
    assert!(
        err.contains("did not answer in 30 s") && err.contains("journalctl"),
        "{err}"
    );
}
