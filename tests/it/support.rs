//! Shared test support: a `TestEnv` with temp folders, a config builder, an in-process emulator,
//! the real daemon binary as a child process, and `wait_until` (never a bare sleep).

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use claid_hotfolder::emulator::{self, Scenario, Stats};
use tokio::process::{Child, Command};

/// Path of the daemon binary built for these tests.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_claid-hotfolder")
}

/// Polls `check` until it returns true or `deadline` passes (then panics naming `what`).
pub async fn wait_until(what: &str, deadline: Duration, mut check: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    loop {
        if check() {
            return;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `wait_until` for a check that has to await (e.g. an HTTP request): polls until it returns
/// true or `deadline` passes (then panics naming `what`).
pub async fn wait_until_async<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    loop {
        if check().await {
            return;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A daemon's folders under one temp dir, plus an emulator serving on 127.0.0.1:0.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub inbox: PathBuf,
    pub outbox: PathBuf,
    pub archive: PathBuf,
    pub rejected: PathBuf,
    pub state: PathBuf,
    pub emulator: emulator::Handle,
}

/// A failing test shows the tail of every daemon log it started (they live in the temp dir,
/// which is removed with the env) and, with `CLAID_TEST_KEEP=1`, keeps the whole folder.
impl Drop for TestEnv {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("daemon-") && n.ends_with(".log"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(80)..];
            eprintln!("--- {} (last {} lines) ---", log.display(), tail.len());
            for line in tail {
                eprintln!("{line}");
            }
        }
        if std::env::var_os("CLAID_TEST_KEEP").is_some() {
            self.dir.disable_cleanup(true);
            eprintln!("kept {}", self.dir.path().display());
        }
    }
}

impl TestEnv {
    pub async fn new(scenario: Scenario) -> TestEnv {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().to_path_buf();
        let emulator = emulator::spawn(scenario).await.expect("emulator starts");
        let env = TestEnv {
            inbox: root.join("inbox"),
            outbox: root.join("outbox"),
            archive: root.join("archive"),
            rejected: root.join("rejected"),
            state: root.join("state"),
            dir,
            emulator,
        };
        // The folders an operator has (the package's tmpfiles.d entry creates them); the
        // daemon creates only its state folder.
        for folder in [&env.inbox, &env.outbox, &env.archive, &env.rejected] {
            std::fs::create_dir_all(folder).expect("folder");
        }
        env
    }

    pub fn stats(&self) -> Stats {
        self.emulator.stats()
    }

    /// Writes a config for this env; `extra` is YAML appended at the top level (it may not
    /// repeat `api` or `folders`; use `api_extra` for keys under `api`).
    pub fn config(&self, api_extra: &str, extra: &str) -> PathBuf {
        let key_file = self.dir.path().join("api-key");
        std::fs::write(&key_file, "test-key\n").expect("key file");
        // As an operator installs it: only the daemon's user may read it.
        std::fs::set_permissions(
            &key_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("key file mode");
        let mut api = format!(
            "api:\n  base_url: {}\n  api_key_file: {}\n  requests_per_second: 1000\n  requests_per_minute: 60000\n  poll: {{ min: 50ms, max: 500ms }}\n",
            self.emulator.base_url(),
            key_file.display()
        );
        for line in api_extra.lines() {
            api.push_str("  ");
            api.push_str(line);
            api.push('\n');
        }
        let text = format!(
            "{api}folders:\n  inbox: {}\n  outbox: {}\n  archive: {}\n  rejected: {}\n  state: {}\nwatch: {{ settle: 100ms, rescan: 500ms }}\nshutdown_grace: 5s\nadmin:\n  socket: {}\n{extra}\n",
            self.inbox.display(),
            self.outbox.display(),
            self.archive.display(),
            self.rejected.display(),
            self.state.display(),
            self.socket().display(),
        );
        let path = self.dir.path().join("config.yaml");
        std::fs::write(&path, text).expect("config");
        path
    }

    /// Lets other users into the temp dir and read the config and key (mode 0755), as a team
    /// member may read the config of the service.
    pub fn open_to_others(&self) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let key_file = self.dir.path().join("api-key");
        if key_file.exists() {
            std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644))
                .expect("chmod key");
        }
    }

    /// The JSON report a superseded run of `<stem>.yaml` wrote (`<stem>.superseded-….report.json`
    /// at the top of the outbox), if one is there.
    pub fn superseded_report(&self, stem: &str) -> Option<PathBuf> {
        let prefix = format!("{stem}.superseded-");
        Self::files_under(&self.outbox)
            .into_iter()
            .find(|p| {
                let p = p.to_string_lossy();
                p.starts_with(&prefix) && p.ends_with(".report.json")
            })
            .map(|p| self.outbox.join(p))
    }

    /// The emulator's answer to `GET {base}/{path}` (a task or a batch) once it says DONE: the
    /// result object its webhook would carry.
    pub async fn emulator_result_when_done(&self, path: &str, deadline: Duration) -> String {
        let url = format!("{}/{path}", self.emulator.base_url());
        wait_for("the task is done", deadline, async || {
            let answer = reqwest::Client::new()
                .get(&url)
                .bearer_auth("test-key")
                .send()
                .await
                .ok()?;
            let text = answer.text().await.ok()?;
            text.contains("\"DONE\"").then_some(text)
        })
        .await
    }

    /// The admin socket of this env's daemon.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    /// Drops a file into the inbox the way a careful user does: written beside, then renamed.
    pub fn drop_file(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        let path = self.inbox.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
        let tmp = path.with_extension("part");
        std::fs::write(&tmp, bytes).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
        path
    }

    /// A manifest of [`static_images`] with its `STATIC` host the emulator's own.
    pub fn static_urls(&self, manifest: &str) -> String {
        manifest.replace("STATIC", &format!("{}/_static", self.emulator.addr()))
    }

    /// `run --once` to completion; returns (exit code, stderr). Its log filter is `info`, or
    /// `IT_RUST_LOG` when set (to read a failing test's run in detail).
    pub async fn run_once(&self, config: &Path) -> (i32, String) {
        let out = Command::new(bin())
            .args(["run", "--once", "--config"])
            .arg(config)
            .env(
                "RUST_LOG",
                std::env::var("IT_RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .expect("daemon runs");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code().unwrap_or(-1), stderr)
    }

    /// `run --once` to completion with extra environment variables (e.g. `CLAID_HOTFOLDER__*`
    /// config overrides) and an optional wrapper command (e.g. `strace … --`) in front of the
    /// binary; returns (exit code, stderr).
    pub async fn run_once_with(
        &self,
        config: &Path,
        envs: &[(&str, &str)],
        wrapper: &[&str],
    ) -> (i32, String) {
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        let out = command
            .args(["run", "--once", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .expect("daemon runs");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code().unwrap_or(-1), stderr)
    }

    /// Starts the daemon (`run`) as a child process; its stderr goes to `<dir>/daemon-N.log`.
    pub fn spawn_daemon(&self, config: &Path, n: usize) -> Child {
        self.spawn_daemon_with(config, n, &[])
    }

    /// `spawn_daemon` with extra environment variables.
    pub fn spawn_daemon_with(&self, config: &Path, n: usize, envs: &[(&str, &str)]) -> Child {
        self.spawn_daemon_wrapped(config, n, envs, &[])
    }

    /// `spawn_daemon_with` behind a wrapper command that execs the binary (e.g.
    /// `prlimit --nofile=128:128 --`), so the child is still the daemon itself.
    pub fn spawn_daemon_wrapped(
        &self,
        config: &Path,
        n: usize,
        envs: &[(&str, &str)],
        wrapper: &[&str],
    ) -> Child {
        let log =
            std::fs::File::create(self.dir.path().join(format!("daemon-{n}.log"))).expect("log");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        command
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("daemon starts")
    }

    pub fn daemon_log(&self, n: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("daemon-{n}.log"))).unwrap_or_default()
    }

    /// Every regular file under `root`, relative, sorted.
    pub fn files_under(root: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if let Ok(rel) = path.strip_prefix(root) {
                    out.push(rel.to_path_buf());
                }
            }
        }
        out.sort();
        out
    }

    pub fn report(&self, manifest_stem_rel: &str) -> serde_json::Value {
        let path = self.outbox.join(format!("{manifest_stem_rel}.report.json"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("report {}: {e}", path.display()));
        serde_json::from_str(&text).expect("report is json")
    }
}

/// A raw HTTP/1.1 server on 127.0.0.1 that reads each request's head and writes what
/// `answer` makes of it (status line, headers and body), then closes the connection: a
/// server that is not what it should be (not S3, ignoring `Range`). Returns its `http://`
/// address and the task serving it (abort it when done).
pub async fn raw_http_server(
    answer: impl Fn(&[u8]) -> Vec<u8> + Send + Sync + 'static,
) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let answer = std::sync::Arc::new(answer);
    let served = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(&answer(&seen)).await;
            });
        }
    });
    (endpoint, served)
}

/// Runs the CLI with `args`; returns (exit code, stdout, stderr).
pub async fn cli(args: &[&str]) -> (i32, String, String) {
    cli_with(args, &[]).await
}

/// The variables that change what the CLI prints (help shows their values) or reads; removed
/// for the runs whose output is compared with snapshots.
pub const CLI_ENV: &[&str] = &[
    "CLAID_HOTFOLDER_CONFIG",
    "CLAID_API_KEY",
    "CLAID_WEBHOOK_SECRET",
    "RUST_LOG",
    "JOURNAL_STREAM",
];

/// Runs the CLI with `args` and extra environment variables, without the variables of
/// [`CLI_ENV`] unless given; returns (exit code, stdout, stderr).
pub async fn cli_with(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(bin());
    for name in CLI_ENV {
        command.env_remove(name);
    }
    let out = command
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .await
        .expect("cli runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether the tests run as root (CI does), where file modes do not refuse anything.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Runs the CLI as a user the file modes apply to: as root, `nobody` with no supplementary
/// groups (through setpriv); otherwise this user. The folders on the way to what it reads must
/// let others in (see `TestEnv::open_to_others`).
pub async fn cli_unprivileged(args: &[&str]) -> (i32, String, String) {
    let mut command = if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(bin());
        c
    } else {
        Command::new(bin())
    };
    for name in CLI_ENV {
        command.env_remove(name);
    }
    let out = command
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("cli runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Sends a signal (`-TERM`, `-HUP`, …) to a child process.
pub fn signal(child: &Child, sig: &str) {
    let pid = child.id().expect("child is running");
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {sig} {pid} failed");
}

/// Sends SIGTERM to a child process.
pub fn sigterm(child: &Child) {
    let pid = child.id().expect("child is running");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -TERM {pid} failed");
}

/// SIGTERM, then the daemon's exit status (it must exit within 20 s).
pub async fn stop(child: &mut Child) -> std::process::ExitStatus {
    sigterm(child);
    tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits in time")
        .expect("wait")
}

/// Dimensions of an encoded image file.
pub fn dimensions(path: &Path) -> (u32, u32) {
    image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .expect("open image")
        .into_dimensions()
        .unwrap_or_else(|e| panic!("{} is not an image: {e}", path.display()))
}

/// A small PNG of the given size.
pub fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .expect("encode png");
    bytes
}

/// Watches the outbox continuously from a thread: every file under a final name (not a dot
/// temp file) must be whole the moment it is seen: images decode, JSON reports parse.
pub struct PartialFileWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl PartialFileWatch {
    pub fn start(root: PathBuf) -> PartialFileWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen: HashMap<PathBuf, u64> = HashMap::new();
            let mut violations = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                for rel in TestEnv::files_under(&root) {
                    let name = rel
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    if name.starts_with('.') || name.ends_with(".csv") {
                        continue;
                    }
                    let path = root.join(&rel);
                    let Ok(bytes) = std::fs::read(&path) else {
                        continue;
                    };
                    if seen.get(&rel) == Some(&(bytes.len() as u64)) {
                        continue;
                    }
                    let whole = if name.ends_with(".json") {
                        serde_json::from_slice::<serde_json::Value>(&bytes)
                            .map(drop)
                            .map_err(|e| e.to_string())
                    } else {
                        image::load_from_memory(&bytes)
                            .map(drop)
                            .map_err(|e| e.to_string())
                    };
                    if let Err(err) = whole {
                        violations.push(format!(
                            "{}: {} bytes, does not decode: {err}",
                            rel.display(),
                            bytes.len()
                        ));
                    }
                    seen.insert(rel, bytes.len() as u64);
                }
                // A short pause between sweeps keeps the watch from eating a shared core; a
                // partial file under a final name stays there, so it is still seen.
                std::thread::sleep(Duration::from_millis(2));
            }
            violations
        });
        PartialFileWatch {
            stop,
            thread: Some(thread),
        }
    }

    pub fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("running")
            .join()
            .expect("watch thread")
    }
}

/// One expected problem from a `.expect` fixture line: its line (None = any) and a substring
/// of its message.
#[derive(Clone, Debug)]
pub struct Expect {
    /// Needs the real request schema (not the stub).
    pub schema: bool,
    pub line: Option<usize>,
    pub needle: String,
}

/// Parses a `.expect` file: `[schema] <line|-> <substring>` per line.
pub fn read_expect(path: &Path) -> Vec<Expect> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (schema, rest) = match l.strip_prefix("schema ") {
                Some(rest) => (true, rest),
                None => (false, l),
            };
            let (line, needle) = rest.split_once(' ').expect("`<line> <substring>`");
            Expect {
                schema,
                line: (line != "-").then(|| line.parse().expect("line number")),
                needle: needle.to_owned(),
            }
        })
        .collect()
}

/// The pinned moto release `.ci/run` installs (`pip install 'moto[server]==…'`).
pub const MOTO_VERSION: &str = "5.2.5";

/// Access keys every test connector uses; moto accepts any signed request.
pub const S3_ACCESS_KEY: &str = "test-access-key";
pub const S3_SECRET_KEY: &str = "test-secret-key-never-shown";

/// A real S3-protocol server for tests: moto's server mode (`moto_server`, from PyPI's
/// `moto[server]`) on 127.0.0.1 and a free port, with its own empty state, stopped when dropped.
/// Its helpers talk S3 over plain HTTP (not through `claid_hotfolder::objects`), so what a test
/// reads back does not depend on the code under test.
pub struct S3Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    http: reqwest::Client,
    /// moto's output, shown when it fails to start.
    _log_dir: tempfile::TempDir,
}

/// moto checks that a request is signed, not the signature: a well-formed header will do.
const S3_AUTHORIZATION: &str = "AWS4-HMAC-SHA256 Credential=test-access-key/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0000";

impl S3Server {
    /// Starts moto and waits (with a deadline) until it answers. Every storage test starts with
    /// this: when `moto_server` is not on the PATH the test is skipped (`None`, after saying so
    /// on stderr), unless the environment variable `CI` is `true`, where it fails: CI installs
    /// moto (`.ci/run`) and must run these tests.
    pub async fn start() -> Option<S3Server> {
        let Some(program) = find_on_path("moto_server") else {
            let install = format!("pip install 'moto[server]=={MOTO_VERSION}'");
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!(
                    "moto_server is not on the PATH, and CI=true must run the storage tests: {install}"
                );
            }
            // Straight to stderr: the test harness captures only the print macros.
            let note = format!(
                "skipped: moto_server is not on the PATH (the S3 tests need it: {install})\n"
            );
            let _ = std::io::Write::write_all(&mut std::io::stderr(), note.as_bytes());
            return None;
        };
        let log_dir = tempfile::tempdir().expect("temp dir");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        // A free port can be taken between probing it and moto binding it: try a few.
        for attempt in 0..3 {
            let port = free_port();
            let log_path = log_dir.path().join(format!("moto-{attempt}.log"));
            let log = std::fs::File::create(&log_path).expect("moto log");
            let mut child = Command::new(&program)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log handle"))
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
            let endpoint = format!("http://127.0.0.1:{port}");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // Exited (port taken?): try another port.
                }
                let answered = http
                    .get(format!("{endpoint}/"))
                    .header("authorization", S3_AUTHORIZATION)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if answered {
                    return Some(S3Server {
                        child,
                        endpoint,
                        http,
                        _log_dir: log_dir,
                    });
                }
                if tokio::time::Instant::now() > deadline {
                    let _ = child.kill().await;
                    panic!(
                        "moto_server did not answer on {endpoint} within 60 s:\n{}",
                        std::fs::read_to_string(&log_path).unwrap_or_default()
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!(
            "moto_server exited at start three times; its log is in {}",
            log_dir.path().display()
        );
    }

    /// A connector named `name` for `bucket` and `prefix` on this server.
    pub fn connector(&self, name: &str, bucket: &str, prefix: &str) -> emulator::StorageConnector {
        emulator::StorageConnector {
            name: name.to_owned(),
            storage: claid_hotfolder::objects::ObjectStorageConfig {
                bucket: bucket.to_owned(),
                prefix: prefix.to_owned(),
                endpoint: Some(self.endpoint.clone()),
                region: None,
                access: claid_hotfolder::objects::Access::S3(
                    claid_hotfolder::objects::Credentials::new(S3_ACCESS_KEY, S3_SECRET_KEY),
                ),
            },
        }
    }

    /// Creates an empty bucket.
    pub async fn create_bucket(&self, bucket: &str) {
        let resp = self
            .http
            .put(format!("{}/{bucket}", self.endpoint))
            .header("authorization", S3_AUTHORIZATION)
            .send()
            .await
            .expect("create bucket");
        assert!(
            resp.status().is_success(),
            "create bucket {bucket}: {}",
            resp.status()
        );
    }

    /// Writes an object (its key is the full key in the bucket).
    pub async fn put_object(&self, bucket: &str, key: &str, bytes: &[u8]) {
        self.put_object_typed(bucket, key, bytes, "application/octet-stream")
            .await;
    }

    /// Writes an object with its `Content-Type`.
    pub async fn put_object_typed(
        &self,
        bucket: &str,
        key: &str,
        bytes: &[u8],
        content_type: &str,
    ) {
        let resp = self
            .http
            .put(format!("{}/{bucket}/{key}", self.endpoint))
            .header("authorization", S3_AUTHORIZATION)
            .header("content-type", content_type)
            .body(bytes.to_vec())
            .send()
            .await
            .expect("put object");
        assert!(
            resp.status().is_success(),
            "put {bucket}/{key}: {}",
            resp.status()
        );
    }

    /// The `Content-Type` an object is served with, or `None` when it does not exist.
    pub async fn content_type(&self, bucket: &str, key: &str) -> Option<String> {
        let resp = self
            .http
            .head(format!("{}/{bucket}/{key}", self.endpoint))
            .header("authorization", S3_AUTHORIZATION)
            .send()
            .await
            .expect("head object");
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return None;
        }
        assert!(
            resp.status().is_success(),
            "head {bucket}/{key}: {}",
            resp.status()
        );
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// The bytes of an object, or `None` when it does not exist.
    pub async fn get_object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let resp = self
            .http
            .get(format!("{}/{bucket}/{key}", self.endpoint))
            .header("authorization", S3_AUTHORIZATION)
            .send()
            .await
            .expect("get object");
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return None;
        }
        assert!(
            resp.status().is_success(),
            "get {bucket}/{key}: {}",
            resp.status()
        );
        Some(resp.bytes().await.expect("object body").to_vec())
    }

    /// Deletes an object (its key is the full key in the bucket).
    pub async fn delete_object(&self, bucket: &str, key: &str) {
        let resp = self
            .http
            .delete(format!("{}/{bucket}/{key}", self.endpoint))
            .header("authorization", S3_AUTHORIZATION)
            .send()
            .await
            .expect("delete object");
        assert!(
            resp.status().is_success(),
            "delete {bucket}/{key}: {}",
            resp.status()
        );
    }

    /// Every key in `bucket` that starts with `prefix`, sorted.
    pub async fn list_keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let resp = self
            .http
            .get(format!("{}/{bucket}", self.endpoint))
            .query(&[("list-type", "2"), ("prefix", prefix), ("max-keys", "1000")])
            .header("authorization", S3_AUTHORIZATION)
            .send()
            .await
            .expect("list objects");
        assert!(
            resp.status().is_success(),
            "list {bucket}/{prefix}: {}",
            resp.status()
        );
        let xml = resp.text().await.expect("listing");
        assert!(
            !xml.contains("<IsTruncated>true"),
            "more than 1000 keys: {xml}"
        );
        let mut keys: Vec<String> = xml
            .split("<Key>")
            .skip(1)
            .filter_map(|rest| rest.split_once("</Key>").map(|(key, _)| key.to_owned()))
            .collect();
        keys.sort();
        keys
    }

    /// Stops moto.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// The first executable `name` in a folder of `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

pub mod webdriver;

impl TestEnv {
    /// The dashboard's address, from the `Dashboard listening` line of daemon `n`'s log (the
    /// config may say `listen: 127.0.0.1:0`).
    pub async fn dashboard(&self, n: usize) -> String {
        let mut addr = String::new();
        wait_until("the dashboard listens", Duration::from_secs(30), || {
            let log = self.daemon_log(n);
            let found = log
                .lines()
                .find(|l| l.contains("Dashboard listening"))
                .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("addr=")))
                .map(str::to_owned);
            match found {
                Some(found) => {
                    addr = found;
                    true
                }
                None => false,
            }
        })
        .await;
        addr
    }
}

/// Makes a FIFO at `path` (`mkfifo`), asserting it was made.
pub fn mkfifo(path: &Path) {
    let made = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(made.success(), "mkfifo {}", path.display());
}

/// `claid-hotfolder web-user add NAME --users-file F` with the password on standard input.
pub async fn web_user_add(users_file: &Path, name: &str, password: &str) -> (i32, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new(bin())
        .args(["web-user", "add", name, "--users-file"])
        .arg(users_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("web-user runs");
    let mut stdin = child.stdin.take().expect("stdin");
    // A name refused before the password is read ends the program first: the
    // pipe is then closed, which is that refusal, not a failure of the test.
    if let Err(e) = stdin.write_all(format!("{password}\n").as_bytes()).await {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "password: {e}");
    }
    drop(stdin);
    let out = child.wait_with_output().await.expect("web-user ends");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// One HTTP/1.1 GET of `target` sent byte for byte (no client normalises `..` away);
/// returns the status and the body.
pub fn raw_get(addr: &str, target: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A local HTTP receiver for alert webhooks: records every POST (path and JSON body) and
/// answers with the status set in `status` (200 unless changed).
#[derive(Clone)]
pub struct Receiver {
    pub addr: std::net::SocketAddr,
    pub messages: Arc<std::sync::Mutex<Vec<(String, serde_json::Value)>>>,
    pub status: Arc<std::sync::atomic::AtomicU16>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        use axum::extract::State;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let receiver = Receiver {
            addr: listener.local_addr().expect("addr"),
            messages: Arc::default(),
            status: Arc::new(std::sync::atomic::AtomicU16::new(200)),
        };
        let state = receiver.clone();
        let app =
            axum::Router::new()
                .fallback(
                    |State(state): State<Receiver>,
                     uri: axum::http::Uri,
                     body: axum::body::Bytes| async move {
                        let value = serde_json::from_slice(&body).unwrap_or_else(|_| {
                            serde_json::Value::String(String::from_utf8_lossy(&body).into_owned())
                        });
                        state
                            .messages
                            .lock()
                            .expect("messages")
                            .push((uri.path().to_owned(), value));
                        axum::http::StatusCode::from_u16(state.status.load(Ordering::SeqCst))
                            .unwrap_or(axum::http::StatusCode::OK)
                    },
                )
                .with_state(state);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        receiver
    }

    /// The URL of a sink on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The bodies received on `path`, in order.
    pub fn on(&self, path: &str) -> Vec<serde_json::Value> {
        self.messages
            .lock()
            .expect("messages")
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// Calls `check` until it returns `Some` (then returns the value) or `deadline` passes (then
/// panics naming `what`). An async closure, so it may borrow and await freely.
pub async fn wait_for<T>(
    what: &str,
    deadline: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let start = tokio::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A stand-in for Google Cloud Storage's XML API in front of moto, whose S3 API it is: each
/// request is passed on as it came but for its `Authorization` (a GCS client sends a bearer
/// token; moto wants a signature's shape), which is kept in `authorizations`. Serves until
/// the test's runtime ends.
pub struct GcsXmlApi {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The `Authorization` header of every request, in order.
    pub authorizations: Arc<std::sync::Mutex<Vec<String>>>,
}

pub async fn gcs_xml_api(s3: &S3Server) -> GcsXmlApi {
    use axum::body::Body;
    use axum::extract::Request;
    let target = s3.endpoint.clone();
    let http = reqwest::Client::new();
    let authorizations: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let seen = authorizations.clone();
    let forward = move |request: Request| {
        let (target, http, seen) = (target.clone(), http.clone(), seen.clone());
        async move {
            let (parts, body) = request.into_parts();
            seen.lock().expect("authorizations").push(
                parts
                    .headers
                    .get(axum::http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned(),
            );
            let body = axum::body::to_bytes(body, 64 * 1024 * 1024)
                .await
                .unwrap_or_default();
            let path = parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            let mut headers = parts.headers.clone();
            headers.remove(axum::http::header::HOST);
            headers.insert(
                axum::http::header::AUTHORIZATION,
                axum::http::HeaderValue::from_static(S3_AUTHORIZATION),
            );
            let answer = http
                .request(parts.method, format!("{target}{path}"))
                .headers(headers)
                .body(body)
                .send()
                .await
                .expect("moto answers");
            let mut response = axum::response::Response::builder().status(answer.status());
            for (name, value) in answer.headers() {
                response = response.header(name, value);
            }
            response
                .body(Body::from(answer.bytes().await.unwrap_or_default()))
                .expect("response")
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, axum::Router::new().fallback(forward)).await;
    });
    GcsXmlApi {
        url: format!("http://{addr}"),
        authorizations,
    }
}

/// A tmpfs mounted over a folder while it lives (root only; `None` where mounts are not
/// allowed, as in an unprivileged container).
pub struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    pub fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .args(["-l"])
            .arg(&self.0)
            .status();
    }
}

/// `n` PNG images of 64×48, `{prefix}{i}.png`, in a new folder for the emulator to serve
/// (`Scenario::static_dir`), and a manifest listing them as URLs on the host `STATIC`
/// ([`TestEnv::static_urls`] names the emulator's).
pub fn static_images(n: usize, prefix: &str) -> (tempfile::TempDir, String) {
    let statics = tempfile::tempdir().expect("static dir");
    let mut text = String::from("images:\n");
    for i in 0..n {
        std::fs::write(statics.path().join(format!("{prefix}{i}.png")), png(64, 48))
            .expect("image");
        text.push_str(&format!("  - input: http://STATIC/{prefix}{i}.png\n"));
    }
    (statics, text)
}

/// How many submits the emulator billed for inputs whose key contains `name`.
pub fn submits_of(stats: &claid_hotfolder::emulator::Stats, name: &str) -> u64 {
    stats
        .submits_by_key
        .iter()
        .filter(|(key, _)| key.contains(name))
        .map(|(_, n)| *n)
        .sum()
}

/// The `input` of each row of a manifest's JSON report, in order.
pub fn report_inputs(report: &serde_json::Value) -> Vec<String> {
    report["jobs"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["input"].as_str().unwrap_or_default().to_owned())
        .collect()
}
