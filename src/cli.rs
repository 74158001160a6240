//! The command line (clap): `run`, `validate`, `plan`, `status`, `jobs`, `replay`, `emulator`,
//! and the mapping of each command's outcome to an exit code.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::config::{self, Config};
use crate::daemon::{self, FatalError, Outcome, RunOptions};
use crate::manifest::{self, Input};
use crate::store::records::{JobState, JobV1, ManifestState};
use crate::store::{Store, StoreError};
use crate::{emulator, logging, signal};

/// Success.
pub const EX_OK: i32 = 0;
/// A command failed (invalid files for `validate`, a fatal daemon error).
pub const EX_FAILURE: i32 = 1;
/// `run --once`: some job failed, is held in doubt, or a manifest was rejected.
pub const EX_JOBS_FAILED: i32 = 2;
/// The configuration is invalid (EX_USAGE).
pub const EX_CONFIG: i32 = 64;
/// Stopped by a signal before the work was done (EX_TEMPFAIL: try again).
pub const EX_INTERRUPTED: i32 = 75;

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
    },
    /// Run the Claid-compatible emulator.
    Emulator {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8787")]
        listen: SocketAddr,
        #[command(flatten)]
        scenario: emulator::ScenarioArgs,
    },
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
        Command::Replay { config, select } => report(cmd_replay(&config.config, &select)),
        Command::Emulator { listen, scenario } => report(cmd_emulator(listen, scenario)),
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
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
    };
    match rt.block_on(daemon::run(config, opts, signal::shutdown())) {
        Ok(Outcome::AllDone) => EX_OK,
        Ok(Outcome::SomeFailed) => EX_JOBS_FAILED,
        Ok(Outcome::Interrupted) => EX_INTERRUPTED,
        Err(err) => {
            tracing::error!(error = %error_chain(&err), "Fatal error; the daemon stops");
            eprintln!("error: {}", error_chain(&err));
            if matches!(err, FatalError::Config(_)) {
                EX_CONFIG
            } else {
                EX_FAILURE
            }
        }
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A file is a config when its top level has a `folders` key; otherwise a manifest.
fn looks_like_config(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let Ok(value) = serde_yaml::from_str::<serde_yaml::Value>(&text) else {
        return false;
    };
    value.get("folders").is_some()
}

fn cmd_validate(config_path: Option<&Path>, files: &[PathBuf]) -> anyhow::Result<i32> {
    let config = match config_path {
        Some(path) if path.exists() => Some(load_config(path)?),
        _ => None,
    };
    let mut n_bad = 0;
    for file in files {
        if looks_like_config(file) {
            match config::load(file) {
                Ok(_) => println!("{}: ok (config)", file.display()),
                Err(err) => {
                    n_bad += 1;
                    println!("{err}");
                }
            }
            continue;
        }
        let file = std::path::absolute(file)
            .with_context(|| format!("cannot resolve {}", file.display()))?;
        let inbox = match &config {
            Some(config) if file.starts_with(&config.folders.inbox) => config.folders.inbox.clone(),
            _ => file.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
        let profiles = config
            .as_ref()
            .map(|c| c.profiles.clone())
            .unwrap_or_default();
        let limits = config.as_ref().map(|c| c.limits).unwrap_or_default();
        match manifest::load(&inbox, &file, &profiles, &limits) {
            Ok(spec) => println!("{}: ok ({} images)", file.display(), spec.jobs.len()),
            Err(err) => {
                n_bad += 1;
                println!("{}", err.error_txt());
            }
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
    let spec = match manifest::load(&inbox, &file, &config.profiles, &config.limits) {
        Ok(spec) => spec,
        Err(err) => {
            println!("{}", err.error_txt());
            return Ok(EX_FAILURE);
        }
    };
    let store = Store::open(&config.folders.state).ok();
    let (mut n_new, mut n_unchanged, mut n_uploads) = (0u64, 0u64, 0u64);
    println!("{:>6}  {:<9}  {:<50}  output", "image", "plan", "input");
    for job in &spec.jobs {
        let unchanged = store.as_ref().is_some_and(|store| {
            matches!(store.done_by_key(&job.key), Ok(Some((_, JobV1 { state: JobState::Done { ref path, ref sha256, .. }, .. })))
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

/// A job state's short name, as used by `jobs --state` and the reports.
pub fn state_name(state: &JobState) -> &'static str {
    match state {
        JobState::Queued => "queued",
        JobState::Submitting { .. } => "submitting",
        JobState::Submitted { .. } => "submitted",
        JobState::Downloading { .. } => "downloading",
        JobState::InDoubt { .. } => "in-doubt",
        JobState::Done { .. } => "done",
        JobState::Failed { .. } => "failed",
    }
}

fn cmd_status(config_path: &Path, json: bool) -> anyhow::Result<i32> {
    let config = load_config(config_path)?;
    let store = open_store(&config)?;
    let mut rows = Vec::new();
    for (mid, m) in store.manifests()? {
        let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
        for (_, job) in store.jobs_of_manifest(mid)? {
            *counts.entry(state_name(&job.state)).or_default() += 1;
        }
        let finished = matches!(m.state, ManifestState::Finished { .. });
        rows.push((mid, m.rel, finished, counts));
    }
    if json {
        let value: Vec<serde_json::Value> = rows
            .iter()
            .map(|(mid, rel, finished, counts)| serde_json::json!({"id": mid, "manifest": rel, "finished": finished, "jobs": counts}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(EX_OK);
    }
    if rows.is_empty() {
        println!("No manifests in the store.");
    }
    for (mid, rel, finished, counts) in rows {
        let counts: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!(
            "{mid:>20}  {:<8}  {rel}  ({})",
            if finished { "finished" } else { "active" },
            counts.join(", ")
        );
    }
    Ok(EX_OK)
}

fn manifest_ids(store: &Store, manifest: Option<&Path>) -> anyhow::Result<Option<Vec<u64>>> {
    let Some(rel) = manifest else { return Ok(None) };
    let rel = rel.to_string_lossy();
    let ids: Vec<u64> = store
        .manifests()?
        .into_iter()
        .filter(|(_, m)| m.rel == rel)
        .map(|(id, _)| id)
        .collect();
    if ids.is_empty() {
        anyhow::bail!(
            "no manifest `{rel}` in the store (give the path relative to the inbox; see `status`)"
        );
    }
    Ok(Some(ids))
}

fn cmd_jobs(
    config_path: &Path,
    state: Option<&str>,
    manifest: Option<&Path>,
) -> anyhow::Result<i32> {
    let config = load_config(config_path)?;
    let store = open_store(&config)?;
    let ids = manifest_ids(&store, manifest)?;
    let manifests = store.manifests()?;
    println!(
        "{:>20}  {:<11}  {:<8}  {:<40}  detail",
        "job", "state", "attempts", "input"
    );
    for (mid, m) in manifests {
        if ids.as_ref().is_some_and(|ids| !ids.contains(&mid)) {
            continue;
        }
        for (id, job) in store.jobs_of_manifest(mid)? {
            let name = state_name(&job.state);
            if state.is_some_and(|s| s != name) {
                continue;
            }
            let detail = match &job.state {
                JobState::Failed { code, message, .. } => format!("{code}: {message}"),
                JobState::Done { path, .. } => path.clone(),
                JobState::Submitted { task_id, .. } => format!("task {task_id}"),
                _ => String::new(),
            };
            println!(
                "{id:>20}  {name:<11}  {:<8}  {:<40}  {detail}   [{}]",
                job.attempts, job.input, m.rel
            );
        }
    }
    Ok(EX_OK)
}

fn cmd_replay(config_path: &Path, select: &ReplaySelect) -> anyhow::Result<i32> {
    let config = load_config(config_path)?;
    let store = open_store(&config)?;
    let mut chosen = Vec::new();
    if let Some(id) = select.job {
        if store.job(id)?.is_none() {
            anyhow::bail!("no job {id} in the store (see `jobs`)");
        }
        chosen.push(id);
    } else {
        let ids = manifest_ids(&store, select.manifest.as_deref())?;
        for (mid, _) in store.manifests()? {
            if ids.as_ref().is_some_and(|ids| !ids.contains(&mid)) {
                continue;
            }
            for (id, job) in store.jobs_of_manifest(mid)? {
                let pick = match &job.state {
                    JobState::Failed { .. } => select.failed || ids.is_some(),
                    JobState::InDoubt { .. } => select.in_doubt || ids.is_some(),
                    _ => ids.is_some(),
                };
                if pick {
                    chosen.push(id);
                }
            }
        }
    }
    for id in &chosen {
        store.requeue(*id, false)?;
    }
    for (mid, m) in store.manifests()? {
        let touched = store
            .jobs_of_manifest(mid)?
            .iter()
            .any(|(id, _)| chosen.contains(id));
        if touched && matches!(m.state, ManifestState::Finished { .. }) {
            store.set_manifest_state(mid, ManifestState::Active)?;
        }
    }
    store.flush()?;
    println!(
        "Requeued {} jobs; they run at the daemon's next start.",
        chosen.len()
    );
    Ok(EX_OK)
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
