//! The command line (clap): `run`, `validate`, `plan`, `status`, `jobs`, `replay`, `emulator`,
//! `web-user` (the dashboard's users file), and the mapping of each command's outcome to an exit
//! code; the hidden `generate-assets` writes the man pages and shell completions generated from
//! this definition (packaging/).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::config::{self, Config};
use crate::daemon::{self, FatalError, Outcome, RunOptions};
use crate::manifest::{self, Input};
use crate::store::records::{JobState, JobV1};
use crate::store::{Store, StoreError};
use crate::{admin, emulator, logging, signal, yaml};

/// Success.
pub const EX_OK: i32 = 0;
/// A command failed (invalid files for `validate`, a fatal daemon error).
pub const EX_FAILURE: i32 = 1;
/// `run --once`: some job failed, is held in doubt, or a manifest was rejected.
pub const EX_JOBS_FAILED: i32 = 2;
/// The configuration is invalid (EX_USAGE).
pub const EX_CONFIG: i32 = 64;
/// The API stayed unreachable (EX_UNAVAILABLE): `run --once` gave up; unfinished jobs stay
/// in the store.
pub const EX_UNAVAILABLE: i32 = 69;
/// Stopped by a signal before the work was done (EX_TEMPFAIL: try again).
pub const EX_INTERRUPTED: i32 = 75;
/// The API refused the key, the credits or the scope (EX_NOPERM): `run --once` gave up;
/// unfinished jobs stay in the store.
pub const EX_REFUSED: i32 = 77;

/// Where the config is read from when neither `--config` nor `CLAID_HOTFOLDER_CONFIG` is set.
pub const DEFAULT_CONFIG: &str = "/etc/claid-hotfolder/claid-hotfolder.yaml";

#[derive(Debug, Parser)]
#[command(
    name = "claid-hotfolder",
    version,
    about = "Edit product images in bulk through the Claid.ai API from a watched folder"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The config file option shared by the commands that need it.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The YAML config file.
    #[arg(long, short = 'c', env = "CLAID_HOTFOLDER_CONFIG", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (systemd runs this).
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Process what is in the inbox now, wait for every job, and exit (0 all done, 2 some failed).
        #[arg(long)]
        once: bool,
        /// Print the effective configuration and exit.
        #[arg(long)]
        print_config: bool,
    },
    /// Validate manifests or a config file; print every problem; exit 1 if any.
    Validate {
        /// Profiles and limits come from this config when given.
        #[arg(long, short = 'c', env = "CLAID_HOTFOLDER_CONFIG")]
        config: Option<PathBuf>,
        /// Manifests or config files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Dry run: the jobs a manifest would create, which are unchanged, and the API calls it costs.
    Plan {
        #[command(flatten)]
        config: ConfigArg,
        file: PathBuf,
    },
    /// Manifests and job counts by state.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List jobs.
    Jobs {
        #[command(flatten)]
        config: ConfigArg,
        /// Only jobs in this state (queued, submitting, submitted, downloading, in-doubt, done, failed).
        #[arg(long)]
        state: Option<String>,
        /// Only jobs of this manifest (path relative to the inbox).
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// Requeue jobs from the store; the daemon picks them up at its next start.
    Replay {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        select: ReplaySelect,
        /// Only jobs that changed since this time (RFC 3339) or this long ago (`2h`).
        #[arg(long)]
        since: Option<String>,
    },
    /// Run the Claid-compatible emulator.
    Emulator {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8787")]
        listen: SocketAddr,
        #[command(flatten)]
        scenario: Box<emulator::ScenarioArgs>,
    },
    /// Manage the dashboard's users (`web.users_file`): add one or set a new password, remove one, list them.
    WebUser {
        /// The YAML config file, for its `web.users_file`.
        #[arg(long, short = 'c', env = "CLAID_HOTFOLDER_CONFIG", default_value = DEFAULT_CONFIG, global = true)]
        config: PathBuf,
        /// The users file to edit instead of the config's `web.users_file`.
        #[arg(long, global = true)]
        users_file: Option<PathBuf>,
        #[command(subcommand)]
        action: WebUserAction,
    },
    /// Write the man pages and the bash, zsh and fish completions into a folder (packaging).
    #[command(hide = true)]
    GenerateAssets {
        /// The folder to write them into; created if missing.
        #[arg(long)]
        out: PathBuf,
    },
}

/// What `web-user` does.
#[derive(Debug, Subcommand)]
pub enum WebUserAction {
    /// Add a user, or set a new password for one: the password is read from the terminal
    /// (twice, not echoed) or from the first line of standard input.
    Add { name: String },
    /// Remove a user (their sessions end when the daemon re-reads the file).
    Remove { name: String },
    /// List the users.
    List,
}

/// Which jobs `replay` requeues.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ReplaySelect {
    /// Every failed job.
    #[arg(long)]
    pub failed: bool,
    /// Every job held in doubt.
    #[arg(long)]
    pub in_doubt: bool,
    /// Every job of this manifest (path relative to the inbox).
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// One job by id.
    #[arg(long)]
    pub job: Option<u64>,
}

/// Runs the parsed command and returns the process exit code.
pub fn execute(cli: Cli) -> i32 {
    match cli.command {
        Command::Run {
            config,
            once,
            print_config,
        } => cmd_run(&config.config, once, print_config),
        Command::Validate { config, files } => report(cmd_validate(config.as_deref(), &files)),
        Command::Plan { config, file } => report(cmd_plan(&config.config, &file)),
        Command::Status { config, json } => report(cmd_status(&config.config, json)),
        Command::Jobs {
            config,
            state,
            manifest,
        } => report(cmd_jobs(
            &config.config,
            state.as_deref(),
            manifest.as_deref(),
        )),
        Command::Replay {
            config,
            select,
            since,
        } => report(cmd_replay(&config.config, &select, since.as_deref())),
        Command::Emulator { listen, scenario } => report(cmd_emulator(listen, *scenario)),
        Command::WebUser {
            config,
            users_file,
            action,
        } => report(cmd_web_user(&config, users_file.as_deref(), &action)),
        Command::GenerateAssets { out } => report(cmd_generate_assets(&out)),
    }
}

fn report(res: anyhow::Result<i32>) -> i32 {
    match res {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            if err.downcast_ref::<config::ConfigError>().is_some() {
                EX_CONFIG
            } else {
                EX_FAILURE
            }
        }
    }
}

/// Blocking-pool threads at most (tokio's default is 512). Its work is file writes, reads
/// and store scans; each thread that allocates can get its own glibc arena, and with ~50
/// threads the arenas held twice the live heap.
const MAX_BLOCKING_THREADS: usize = 8;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
        .context("cannot start the async runtime")
}

/// A one-thread runtime for the commands that talk to the daemon or read the store.
fn small_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn load_config(path: &Path) -> anyhow::Result<Config> {
    config::load(path).map_err(anyhow::Error::from)
}

fn cmd_run(path: &Path, once: bool, print_config: bool) -> i32 {
    let config = match config::load(path) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err:#}");
            return EX_CONFIG;
        }
    };
    if print_config {
        println!("{config:#?}");
        return EX_OK;
    }
    logging::init(match config.log.format {
        config::LogFormat::Json => logging::Format::Json,
        config::LogFormat::Text => logging::Format::Text,
    });
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: {err:#}");
            return EX_FAILURE;
        }
    };
    let opts = RunOptions {
        once,
        progress_bar: once && std::io::stderr().is_terminal(),
        config_path: Some(path.to_path_buf()),
    };
    let outcome = rt.block_on(daemon::run(config, opts, signal::shutdown()));
    // A validation still running on the blocking pool (abandoned at a stop) is not waited for.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Ok(Outcome::AllDone) => EX_OK,
        Ok(Outcome::SomeFailed) => EX_JOBS_FAILED,
        Ok(Outcome::Interrupted) => EX_INTERRUPTED,
        Ok(Outcome::Refused { status, reason }) => {
            let hint = match status {
                401 => {
                    "the API key was refused: check the key in `api.api_key_file` (or CLAID_API_KEY)"
                }
                402 => "the Claid account has no credits left: top it up, then run again",
                403 => "the API key lacks the `image_editing` permission: create a key with it",
                _ => "the API refused the daemon",
            };
            eprintln!(
                "error: {hint} (HTTP {status}: {reason}); unfinished jobs stay in the store and resume at the next run"
            );
            EX_REFUSED
        }
        Ok(Outcome::Unreachable { why }) => {
            eprintln!(
                "error: the Claid API stayed unreachable: {why}; unfinished jobs stay in the store and resume at the next run"
            );
            EX_UNAVAILABLE
        }
        Err(err) => {
            tracing::error!(error = %daemon::error_chain(&err), "Fatal error; the daemon stops");
            eprintln!("error: {}", daemon::error_chain(&err));
            if matches!(err, FatalError::Config(_)) {
                EX_CONFIG
            } else {
                EX_FAILURE
            }
        }
    }
}

/// What `validate` takes a file for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Manifest,
    Config,
    /// Unreadable as YAML, empty, or not a mapping: reported both ways.
    Unknown,
}

/// A mapping with `images` is a manifest, one with a config key a config; anything else that
/// parses as a mapping is taken for a manifest.
fn kind_of(path: &Path) -> FileKind {
    let Ok(bytes) = std::fs::read(path) else {
        return FileKind::Unknown;
    };
    let text = String::from_utf8_lossy(&bytes);
    // Bounded like the daemon's parsing, so a nesting bomb is refused at once, not in minutes.
    let bounds = yaml::value::Bounds {
        max_depth: yaml::MAX_DEPTH,
        max_entries: config::DEFAULT_MAX_IMAGES,
        long_list: None,
    };
    let map = match yaml::parse(&text, &bounds) {
        Ok(serde_json::Value::Object(map)) => map,
        Err(yaml::ParseError {
            kind: yaml::ParseErrorKind::TooManyEntries { within, .. },
            ..
        }) if within == "images" => return FileKind::Manifest,
        _ => return FileKind::Unknown,
    };
    if map.contains_key("images") {
        FileKind::Manifest
    } else if config::TOP_KEYS.iter().any(|key| map.contains_key(*key)) {
        FileKind::Config
    } else {
        FileKind::Manifest
    }
}

/// Validates one file as a config; `Ok(true)` when valid.
fn validate_config_file(file: &Path) -> bool {
    match config::load(file) {
        Ok(_) => {
            println!("{}: ok (config)", file.display());
            true
        }
        Err(err) => {
            println!("{err}");
            false
        }
    }
}

/// Validates one file as a manifest; `Ok(true)` when valid.
fn validate_manifest_file(config: Option<&Config>, file: &Path) -> anyhow::Result<bool> {
    let file =
        std::path::absolute(file).with_context(|| format!("cannot resolve {}", file.display()))?;
    let inbox = match config {
        Some(config) if file.starts_with(&config.folders.inbox) => config.folders.inbox.clone(),
        _ => file.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    let profiles = config.map(|c| c.profiles.clone()).unwrap_or_default();
    let limits = config.map(|c| c.limits).unwrap_or_default();
    let load_ctx = manifest::LoadContext {
        inbox: &inbox,
        outbox: config.map(|c| c.folders.outbox.as_path()),
        profiles: &profiles,
        limits: &limits,
    };
    match manifest::load(&load_ctx, &file) {
        Ok(spec) => {
            println!("{}: ok ({} images)", file.display(), spec.jobs.len());
            Ok(true)
        }
        Err(err) => {
            println!("{}", err.error_txt());
            Ok(false)
        }
    }
}

fn cmd_validate(config_path: Option<&Path>, files: &[PathBuf]) -> anyhow::Result<i32> {
    let config = match config_path {
        Some(path) if path.exists() => Some(load_config(path)?),
        _ => None,
    };
    let mut n_bad = 0;
    for file in files {
        let ok = match kind_of(file) {
            FileKind::Config => validate_config_file(file),
            FileKind::Manifest => validate_manifest_file(config.as_ref(), file)?,
            FileKind::Unknown => {
                println!(
                    "{}: neither a manifest nor a config can be read from it.",
                    file.display()
                );
                println!("As a manifest:");
                validate_manifest_file(config.as_ref(), file)?;
                println!("As a config:");
                validate_config_file(file);
                false
            }
        };
        if !ok {
            n_bad += 1;
        }
    }
    Ok(if n_bad == 0 { EX_OK } else { EX_FAILURE })
}

fn open_store(config: &Config) -> anyhow::Result<Store> {
    match Store::open(&config.folders.state) {
        Ok(store) => Ok(store),
        Err(err @ StoreError::Locked { .. }) => Err(anyhow::Error::from(err)
            .context("the daemon is running and holds the store; stop it (systemctl stop claid-hotfolder) to use this command")),
        Err(err) => Err(err.into()),
    }
}

fn cmd_plan(config_path: &Path, file: &Path) -> anyhow::Result<i32> {
    let config = load_config(config_path)?;
    let file = std::path::absolute(file)?;
    let inbox = if file.starts_with(&config.folders.inbox) {
        config.folders.inbox.clone()
    } else {
        file.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    let load_ctx = manifest::LoadContext {
        inbox: &inbox,
        outbox: Some(&config.folders.outbox),
        profiles: &config.profiles,
        limits: &config.limits,
    };
    let spec = match manifest::load(&load_ctx, &file) {
        Ok(spec) => spec,
        Err(err) => {
            println!("{}", err.error_txt());
            return Ok(EX_FAILURE);
        }
    };
    let store = Store::open(&config.folders.state).ok();
    let rt = small_runtime()?;
    let (mut n_new, mut n_unchanged, mut n_uploads) = (0u64, 0u64, 0u64);
    println!("{:>6}  {:<9}  {:<50}  output", "image", "plan", "input");
    for job in &spec.jobs {
        let unchanged = store.as_ref().is_some_and(|store| {
            matches!(rt.block_on(store.done_by_key(&job.key)), Ok(Some((_, JobV1 { state: JobState::Done { ref path, ref sha256, .. }, .. })))
                if crate::output::sha256_file(Path::new(path)).is_ok_and(|found| &found == sha256))
        });
        let (input, local) = match &job.input {
            Input::Remote(url) => (url.clone(), false),
            Input::Local { rel, .. } => (rel.display().to_string(), true),
        };
        let plan = if unchanged {
            n_unchanged += 1;
            "unchanged"
        } else {
            n_new += 1;
            if local {
                n_uploads += 1;
            }
            "new"
        };
        println!(
            "{:>6}  {:<9}  {:<50}  {}",
            job.idx,
            plan,
            input,
            job.output_rel.display()
        );
    }
    let n_async = n_new - n_uploads;
    println!();
    println!(
        "{} images: {n_new} to process, {n_unchanged} unchanged. API calls: {n_async} submits + about {} polls + {n_uploads} uploads.",
        spec.jobs.len(),
        n_async + n_async / 5
    );
    if store.is_none() {
        println!("(the store is in use or missing, so unchanged images were not detected)");
    }
    Ok(EX_OK)
}

/// Asks the running daemon over its admin socket; `None` when no daemon answers there.
fn ask_daemon(
    config: &Config,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<Option<(u16, Vec<u8>)>> {
    let rt = small_runtime()?;
    match rt.block_on(admin::request(&config.admin.socket, method, path, body)) {
        Ok(answer) => Ok(Some(answer)),
        Err(admin::AdminError::NotRunning { .. }) => Ok(None),
        Err(err) => Err(err.into()),
    }
}

fn from_daemon<T: serde::de::DeserializeOwned>(answer: (u16, Vec<u8>)) -> anyhow::Result<T> {
    let (status, body) = answer;
    if status != 200 {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        anyhow::bail!("{message}");
    }
    serde_json::from_slice(&body).context("the daemon sent an answer this version cannot read")
}

fn cmd_status(config_path: &Path, json: bool) -> anyhow::Result<i32> {
    let config = load_config(config_path)?;
    let view: admin::StatusView = match ask_daemon(&config, "GET", "/status", None)? {
        Some(answer) => from_daemon(answer)?,
        None => {
            let store = open_store(&config)?;
            small_runtime()?.block_on(admin::status_view(&store, None))?
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(EX_OK);
    }
    match &view.daemon {
        Some(d) => println!(
            "daemon: {}{}; {} in flight, {} queued, up {}s",
            d.health,
            d.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default(),
            d.in_flight,
            d.queued,
            d.uptime_secs
        ),
        None => println!("daemon: not running (read from the store)"),
    }
    if view.manifests.is_empty() {
        println!("No manifests in the store.");
        return Ok(EX_OK);
    }
    println!(
        "{:<40} {:>8} {:>7} {:>7} {:>9} {:>7} {:>8} {:>9} {:>8}",
        "manifest", "state", "total", "done", "in flight", "queued", "failed", "img/min", "eta"
    );
    for m in &view.manifests {
        println!(
            "{:<40} {:>8} {:>7} {:>7} {:>9} {:>7} {:>8} {:>9} {:>8}",
            m.manifest,
            if m.finished { "finished" } else { "active" },
            m.total,
            m.done,
            m.in_flight,
            m.queued,
            m.failed,
            m.images_per_minute
                .map_or("-".to_owned(), |r| format!("{r:.1}")),
            m.eta_secs.map_or("-".to_owned(), |s| format!("{s}s")),
        );
    }
    Ok(EX_OK)
}

fn cmd_jobs(
    config_path: &Path,
    state: Option<&str>,
    manifest: Option<&Path>,
) -> anyhow::Result<i32> {
    let config = load_config(config_path)?;
    let query = admin::JobsQuery {
        state: state.map(str::to_owned),
        manifest: manifest.map(|m| m.to_string_lossy().into_owned()),
    };
    let mut path = "/jobs".to_owned();
    let mut params = Vec::new();
    if let Some(state) = &query.state {
        params.push(format!("state={}", url_encode(state)));
    }
    if let Some(manifest) = &query.manifest {
        params.push(format!("manifest={}", url_encode(manifest)));
    }
    if !params.is_empty() {
        path = format!("{path}?{}", params.join("&"));
    }
    let jobs: Vec<admin::JobView> = match ask_daemon(&config, "GET", &path, None)? {
        Some(answer) => from_daemon(answer)?,
        None => {
            let store = open_store(&config)?;
            small_runtime()?.block_on(admin::jobs_view(&store, &query))?
        }
    };
    println!(
        "{:>20}  {:<11}  {:>8}  {:<44}  {:<30}  detail",
        "job", "state", "attempts", "input", "manifest"
    );
    for j in &jobs {
        println!(
            "{:>20}  {:<11}  {:>8}  {:<44}  {:<30}  {}",
            j.id, j.state, j.attempts, j.input, j.manifest, j.detail
        );
    }
    println!("{} jobs", jobs.len());
    Ok(EX_OK)
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn cmd_replay(
    config_path: &Path,
    select: &ReplaySelect,
    since: Option<&str>,
) -> anyhow::Result<i32> {
    let config = load_config(config_path)?;
    let since_ms = match since {
        Some(text) => Some(parse_since(text)?),
        None => None,
    };
    let req = admin::ReplayRequest {
        failed: select.failed,
        in_doubt: select.in_doubt,
        manifest: select
            .manifest
            .as_ref()
            .map(|m| m.to_string_lossy().into_owned()),
        job: select.job,
        since_ms,
    };
    let body = serde_json::to_value(&req)?;
    let answer: admin::ReplayAnswer = match ask_daemon(&config, "POST", "/replay", Some(&body))? {
        Some(answer) => {
            let answer: admin::ReplayAnswer = from_daemon(answer)?;
            println!("Requeued {} jobs in the running daemon.", answer.requeued);
            answer
        }
        None => {
            let store = open_store(&config)?;
            let answer = small_runtime()?.block_on(admin::replay_offline(&store, &req))?;
            println!(
                "Requeued {} jobs; they run at the daemon's next start.",
                answer.requeued
            );
            answer
        }
    };
    Ok(if answer.requeued == 0 {
        EX_FAILURE
    } else {
        EX_OK
    })
}

/// `--since`: an RFC 3339 time (`2026-11-29T10:00:00Z`) or a duration ago (`2h`).
fn parse_since(text: &str) -> anyhow::Result<u64> {
    if let Ok(at) = humantime::parse_rfc3339_weak(text) {
        let ms = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        return Ok(ms);
    }
    let ago = humantime::parse_duration(text).with_context(|| {
        format!("--since {text}: give a time like 2026-11-29T10:00:00Z or a duration like 2h")
    })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Ok(now.saturating_sub(ago).as_millis() as u64)
}

fn cmd_emulator(listen: SocketAddr, scenario: emulator::ScenarioArgs) -> anyhow::Result<i32> {
    logging::init(logging::Format::Text);
    let rt = runtime()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        println!("http://{addr}/v1");
        emulator::run(listener, scenario.into_scenario(), signal::shutdown())
            .await
            .context("emulator failed")?;
        Ok(EX_OK)
    })
}

/// The name of the binary, of its man page and of its completion files.
pub const BIN_NAME: &str = "claid-hotfolder";

/// The command line as a user sees it: `Cli` without its hidden subcommands. The man pages and
/// the completions are generated from it, so `generate-assets` documents and completes nothing
/// that `--help` does not show.
pub fn documented_command() -> clap::Command {
    let full = <Cli as clap::CommandFactory>::command();
    let mut cmd = clap::Command::new(BIN_NAME)
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(full.is_subcommand_required_set())
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(about) = full.get_about() {
        cmd = cmd.about(about.clone());
    }
    if let Some(long_about) = full.get_long_about() {
        cmd = cmd.long_about(long_about.clone());
    }
    cmd
}

/// The files a package installs beside the binary, for the FILES section of the man page.
const MAN_FILES: &[(&str, &str)] = &[
    (
        DEFAULT_CONFIG,
        "The configuration (a conffile of the package); every key is documented in it.",
    ),
    (
        "/etc/claid-hotfolder/claid-api-key",
        "The Claid API key, one line, mode 0600 root; the unit hands it to the daemon with LoadCredential=.",
    ),
    (
        "/usr/lib/systemd/system/claid-hotfolder.service",
        "The hardened systemd unit (under /usr/local/lib with cargo install): systemctl enable --now claid-hotfolder.",
    ),
    (
        "/srv/claid/inbox, outbox, archive, rejected",
        "The default folders, created by tmpfiles.d and writable by the claid-hotfolder group.",
    ),
    (
        "/var/lib/claid-hotfolder",
        "The job store (StateDirectory= of the unit); back it up with the outbox.",
    ),
    (
        "/run/claid-hotfolder/admin.sock",
        "The admin socket of the running daemon, used by status, jobs and replay.",
    ),
    (
        "/usr/share/doc/claid-hotfolder/",
        "README.md (installation, operation), ARCHITECTURE.md, docs/ and an example configuration.",
    ),
];

/// Writes `claid-hotfolder.1` (with FILES and SEE ALSO sections), one `claid-hotfolder-<sub>.1`
/// per subcommand, and the bash, zsh and fish completions into `out`.
fn cmd_web_user(
    config_path: &Path,
    users_file: Option<&Path>,
    action: &WebUserAction,
) -> anyhow::Result<i32> {
    use crate::web::users::{self, Users};
    let path = match users_file {
        Some(path) => path.to_path_buf(),
        None => load_config(config_path)?
            .web
            .and_then(|web| web.users_file)
            .with_context(|| {
                format!(
                    "{} sets no `web.users_file`; set it, or give --users-file",
                    config_path.display()
                )
            })?,
    };
    match action {
        WebUserAction::List => {
            for name in Users::read(&path)?.by_name.keys() {
                println!("{name}");
            }
        }
        WebUserAction::Add { name } => {
            users::check_name(name)?;
            let mut all = Users::read_or_empty(&path)?;
            let password = read_password()?;
            if password.chars().count() < users::MIN_PASSWORD_CHARS {
                return Err(users::UsersError::ShortPassword.into());
            }
            let replaced = all
                .by_name
                .insert(name.clone(), users::hash_password(&password)?)
                .is_some();
            all.write(&path)?;
            let done = if replaced {
                "new password for"
            } else {
                "added"
            };
            println!("{done} {name} in {}", path.display());
        }
        WebUserAction::Remove { name } => {
            let mut all = Users::read(&path)?;
            if all.by_name.remove(name).is_none() {
                return Err(users::UsersError::NoSuchUser(name.clone()).into());
            }
            all.write(&path)?;
            println!("removed {name} from {}", path.display());
        }
    }
    Ok(EX_OK)
}

/// A password from the terminal (asked twice, not echoed) or the first line of standard input.
fn read_password() -> anyhow::Result<String> {
    use std::io::BufRead;
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin.lock().read_line(&mut line)?;
        return Ok(line.trim_end_matches(['\n', '\r']).to_owned());
    }
    let ask = |prompt: &str| -> anyhow::Result<String> {
        eprint!("{prompt}");
        let before = rustix::termios::tcgetattr(&stdin)?;
        let mut quiet = before.clone();
        quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &quiet)?;
        let mut line = String::new();
        let read = stdin.lock().read_line(&mut line);
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &before)?;
        eprintln!();
        read?;
        Ok(line.trim_end_matches(['\n', '\r']).to_owned())
    };
    let first = ask("Password: ")?;
    let again = ask("Again: ")?;
    anyhow::ensure!(
        first == again,
        "the two passwords differ; nothing was changed"
    );
    Ok(first)
}

fn cmd_generate_assets(out: &Path) -> anyhow::Result<i32> {
    use clap_complete::Shell;
    use clap_mangen::roff::{Roff, bold, roman};

    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let write = |name: &str, bytes: &[u8]| -> anyhow::Result<()> {
        let path = out.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
        println!("{}", path.display());
        Ok(())
    };

    let mut cmd = documented_command().disable_help_subcommand(true);
    cmd.build();
    for sub in cmd.get_subcommands() {
        let man = clap_mangen::Man::new(sub.clone());
        let mut page = Vec::new();
        man.render(&mut page)?;
        write(&man.get_filename(), &page)?;
    }
    let man = clap_mangen::Man::new(cmd.clone());
    let mut page = Vec::new();
    man.render(&mut page)?;
    let mut extra = Roff::new();
    extra.control("SH", ["FILES"]);
    for (path, what) in MAN_FILES {
        extra
            .control("TP", [])
            .text([bold(*path)])
            .text([roman(*what)]);
    }
    extra
        .control("SH", ["SEE ALSO"])
        .text([roman("systemctl(1), journalctl(1), systemd.exec(5)")])
        .control("PP", [])
        .text([roman(
            "README.md in /usr/share/doc/claid-hotfolder/: installation, manifests, operation.",
        )]);
    // `to_roff` skips the apostrophe preamble that `render` already wrote once.
    page.extend_from_slice(extra.to_roff().as_bytes());
    write(&man.get_filename(), &page)?;

    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut documented_command(), BIN_NAME, &mut script);
        write(
            &clap_complete::Generator::file_name(&shell, BIN_NAME),
            &script,
        )?;
    }
    Ok(EX_OK)
}
