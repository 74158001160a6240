//! The command line (clap): `run`, `validate`, `plan`, `status`, `jobs`, `replay`, `emulator`,
//! `web-user` (the dashboard's users file), and the mapping of each command's outcome to an exit
//! code of the one table in [`crate::exit`]; the hidden `generate-assets` writes the man pages
//! and shell completions generated from this definition (packaging/).
//!
//! Every error is printed once, with its causes and, where one applies, a hint (`error: …`,
//! `hint: …` on stderr); once `run` has set up logging, as one log line. `status`, `jobs` and
//! `plan` never write the state folder: without a daemon to ask they read a private copy of
//! the store ([`Snapshot`]).

use std::io::{self, IsTerminal};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::codes::StateName;
use crate::config::{self, Config, ConfigError};
use crate::daemon::{self, Outcome, RunOptions};
use crate::manifest::{self, Input};
use crate::os_error::OsCause;
use crate::store::records::JobState;
use crate::store::snapshot::Snapshot;
use crate::store::{Store, StoreError};
use crate::text::Escaped;
use crate::{admin, emulator, exit, logging, signal, yaml};

// The exit codes of earlier versions' callers; the one table is `crate::exit`.
pub const EX_OK: i32 = exit::OK;
pub const EX_JOBS_FAILED: i32 = exit::JOBS_FAILED;
pub const EX_CONFIG: i32 = exit::USAGE;
pub const EX_UNAVAILABLE: i32 = exit::UNAVAILABLE;
pub const EX_INTERRUPTED: i32 = exit::TEMP_FAIL;
pub const EX_REFUSED: i32 = exit::NO_PERM;

/// Where the config is read from when neither `--config` nor `CLAID_HOTFOLDER_CONFIG` is set.
pub const DEFAULT_CONFIG: &str = "/etc/claid-hotfolder/claid-hotfolder.yaml";

#[derive(Debug, Parser)]
#[command(
    name = "claid-hotfolder",
    version,
    about = "Edit product images in bulk through the Claid.ai API from a watched folder",
    after_long_help = exit_codes_help()
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
        /// Process what is in the inbox now, wait for every job, and exit (0 all done, 2 some failed); a progress bar when stderr is a terminal.
        #[arg(long)]
        once: bool,
        /// Print the effective configuration as YAML (credentials in URLs redacted) and exit.
        #[arg(long)]
        print_config: bool,
    },
    /// Validate manifests or config files; print every problem; exit 65 if a file has any.
    ///
    /// A config whose files or storages the start would refuse exits with the start's own code
    /// (64, 69, 74 or 77), as the README's exit codes say.
    Validate {
        /// Profiles, limits and the outbox come from this config when given.
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
        /// The manifest to plan.
        file: PathBuf,
    },
    /// Per-manifest progress and job counts (from the running daemon, or read from the store).
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List jobs (from the running daemon, or read from the store).
    Jobs {
        #[command(flatten)]
        config: ConfigArg,
        /// Only jobs in this state.
        #[arg(long, value_enum)]
        state: Option<StateName>,
        /// Only jobs of this manifest (path relative to the inbox).
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// Requeue failed, in-doubt or chosen jobs: a running daemon runs them at once, otherwise
    /// they run at its next start.
    Replay {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        select: ReplaySelect,
        /// Only jobs that changed since this time (RFC 3339, `2026-11-29T10:00:00Z`) or this long ago (`2h`).
        #[arg(long, value_name = "TIME", value_parser = parse_since)]
        since: Option<u64>,
        /// List the jobs that would be requeued (and which Claid made or may have made already:
        /// sending those again is billed again) without changing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Run the Claid-compatible emulator.
    Emulator {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
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
    /// Every job of this manifest that is done, failed or in doubt (path relative to the inbox).
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// One job by id (see `jobs`).
    #[arg(long)]
    pub job: Option<u64>,
}

/// The exit codes, for the end of `--help` and the man page.
fn exit_codes_help() -> String {
    let mut text = String::from("Exit codes:\n");
    for (code, name, meaning) in exit::TABLE {
        text.push_str(&format!("  {code:>3}  {name:<15} {meaning}\n"));
    }
    text
}

/// `println!` panics when stdout cannot be written. With this hook a closed pipe
/// (`claid-hotfolder jobs | head -1`) ends the process quietly with 141, as SIGPIPE ends the
/// shell's tools; any other failure (a full disk) is one `error:` line and 74 (`EX_IOERR`).
/// Other panics keep the default hook.
pub fn exit_quietly_when_stdout_closes() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if let Some(cause) = message.strip_prefix("failed printing to stdout: ") {
            if cause.contains("Broken pipe") {
                std::process::exit(141);
            }
            eprintln!("error: cannot write to stdout: {cause}");
            std::process::exit(exit::IO_ERR);
        }
        default(info);
    }));
}

/// Parses `args` (the first is the program) and runs the command; returns the exit code. A
/// command line clap refuses exits with 64 (clap's own is 2, which `run --once` uses).
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> i32 {
    match Cli::try_parse_from(args) {
        Ok(cli) => execute(cli),
        Err(err) => {
            // `--help` and `--version` are errors to clap, printed on stdout.
            let _ = err.print();
            if err.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            }
        }
    }
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
        } => report(cmd_jobs(&config.config, state, manifest.as_deref())),
        Command::Replay {
            config,
            select,
            since,
            dry_run,
        } => report(cmd_replay(&config.config, &select, since, dry_run)),
        Command::Emulator { listen, scenario } => report(cmd_emulator(listen, *scenario)),
        Command::WebUser {
            config,
            users_file,
            action,
        } => report(cmd_web_user(&config, users_file.as_deref(), &action)),
        Command::GenerateAssets { out } => report(cmd_generate_assets(&out)),
    }
}

/// Prints a failed command's error once (with its causes, and a hint where one applies) and
/// returns its exit code.
fn report(res: anyhow::Result<i32>) -> i32 {
    match res {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            if let Some(hint) = exit::hint(&err) {
                eprintln!("hint: {hint}");
            }
            exit::classify(&err)
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

/// The config a command runs with; a missing or unreadable file says how to point at it.
fn load_config(path: &Path) -> anyhow::Result<Config> {
    config::load(path).map_err(|err| {
        let ConfigError::Read { path, cause } = &err else {
            return err.into();
        };
        let message = format!(
            "cannot read config file {}: {}",
            path.display(),
            OsCause(cause)
        );
        // As `exit::classify` files it: refused access is 77, any other unreadable config 64.
        let code = match exit::of_io(cause, exit::Access::Read) {
            exit::NO_PERM => exit::NO_PERM,
            _ => exit::USAGE,
        };
        let coded = exit::Coded::new(code, message);
        if cause.kind() == io::ErrorKind::NotFound {
            coded.with_hint(format!(
                "give the config with --config FILE or CLAID_HOTFOLDER_CONFIG (the package installs {DEFAULT_CONFIG})"
            ))
        } else if coded.code == exit::NO_PERM {
            coded.with_hint(access_hint(path, None))
        } else {
            coded
        }
        .into()
    })
}

/// `err` with a hint: the same message and exit code.
fn hinted(err: impl Into<anyhow::Error>, hint: String) -> anyhow::Error {
    let err = err.into();
    exit::Coded::new(exit::classify(&err), format!("{err:#}"))
        .with_hint(hint)
        .into()
}

fn cmd_run(path: &Path, once: bool, print_config: bool) -> i32 {
    let config = match load_config(path) {
        Ok(config) => config,
        Err(err) => return report(Err(err)),
    };
    if print_config {
        print!("{}", config::print::to_yaml(&config));
        return exit::OK;
    }
    let terminal = logging::init(match config.log.format {
        config::LogFormat::Json => logging::Format::Json,
        config::LogFormat::Text => logging::Format::Text,
    });
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(err) => return report(Err(err)),
    };
    let unreachable_timeout = config.api.unreachable_timeout;
    let opts = RunOptions {
        once,
        progress_bar: (once && io::stderr().is_terminal()).then_some(terminal),
        config_path: Some(path.to_path_buf()),
    };
    let outcome = rt.block_on(daemon::run(config, opts, signal::shutdown(once)));
    // A validation still running on the blocking pool (abandoned at a stop) is not waited for.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    // Logging is set up: each ending is reported once, as a log line (stderr or the journal).
    match outcome {
        Ok(Outcome::AllDone) => exit::OK,
        Ok(Outcome::SomeFailed) => exit::JOBS_FAILED,
        Ok(Outcome::Interrupted) => exit::TEMP_FAIL,
        Ok(Outcome::Refused { refusal, reason }) => {
            tracing::error!(
                status = refusal.status(),
                reason = %Escaped::str(&reason),
                "{}; unfinished jobs stay in the store and resume at the next run",
                crate::pipeline::health::capitalised(refusal.fix())
            );
            refusal.exit_code()
        }
        Ok(Outcome::Unreachable { why, bucket }) => {
            let denied = bucket && why.contains("access denied");
            let what = if bucket {
                "A storage's bucket stayed unreachable (the Claid API answers)"
            } else if why.contains(crate::pipeline::health::RATE_LIMITED) {
                "The Claid API answered every call with 429 (rate limited: another client using the same API key may be spending its quota, or the account's limits are lower than `api.requests_per_minute`)"
            } else if why.starts_with(crate::pipeline::health::RESULT_HOST) {
                "The host of Claid's results stayed unreachable (the Claid API answers; results wait there for a day)"
            } else if why.contains("within api.request_timeout")
                || why.contains("within api.upload_timeout")
            {
                // It takes connections but its answers do not come: "unreachable" sent the
                // operator to the network.
                "The Claid API answered its last calls too late (`error` names the call and its timeout: a slow Claid wants a longer one; a proxy or firewall that holds answers up wants a look)"
            } else {
                "The Claid API stayed unreachable"
            };
            let waited = humantime::format_duration(unreachable_timeout);
            if denied {
                tracing::error!(
                    error = %Escaped::str(&why),
                    "Through `api.unreachable_timeout` ({waited}), a storage's bucket kept refusing the daemon's keys (the Claid API answers): fix the storage's `credentials_file` or the bucket's policy; unfinished jobs stay in the store and resume at the next run"
                );
            } else {
                tracing::error!(
                    error = %Escaped::str(&why),
                    "{what} for `api.unreachable_timeout` ({waited}); unfinished jobs stay in the store and resume at the next run (a longer `api.unreachable_timeout` waits longer)"
                );
            }
            // Refused keys are no outage: access refused, as at the start's check (77), so
            // a wrapper does not keep trying what only new keys heal.
            if denied {
                exit::NO_PERM
            } else {
                exit::UNAVAILABLE
            }
        }
        Ok(Outcome::StorageHeld { why }) => {
            tracing::error!(
                error = %Escaped::str(&why),
                "A storage cannot be used as configured (below): fix the config (or the connector at Claid) as it says, then run again (the images Claid already wrote are found, not billed again); unfinished jobs stay in the store and resume at the next run"
            );
            exit::USAGE
        }
        Ok(Outcome::StoreUnwritable { why }) => {
            tracing::error!(
                error = %Escaped::str(&why),
                "The job store could not be written (is the state folder's disk full or read-only?): what could not be recorded is taken up again at the next run, once the store can be written; free space there, then run again"
            );
            exit::IO_ERR
        }
        Ok(Outcome::Unwritable { why }) if why.contains("EMFILE") || why.contains("ENFILE") => {
            tracing::error!(
                error = %Escaped::str(&why),
                "The daemon ran out of file descriptors writing outputs (api.unreachable_timeout), so no new image was submitted; the disk is not the cause: raise its open-files limit (LimitNOFILE= in the unit, `ulimit -n` by hand) or lower api.max_in_flight and api.max_downloads: unfinished jobs stay in the store and resume at the next run"
            );
            exit::CANT_CREATE
        }
        Ok(Outcome::Unwritable { why })
            if why.contains("read-only filesystem") || why.contains("EROFS") =>
        {
            tracing::error!(
                error = %Escaped::str(&why),
                "The outbox's filesystem stayed read-only (api.unreachable_timeout), so no new image was submitted; remount it read-write (`mount -o remount,rw`, or find why the kernel made it read-only: `dmesg`): unfinished jobs stay in the store and resume at the next run"
            );
            exit::CANT_CREATE
        }
        Ok(Outcome::Unwritable { why }) => {
            tracing::error!(
                error = %Escaped::str(&why),
                "The outbox's disk stayed full or unwritable (api.unreachable_timeout), so no new image was submitted; free space or fix its permissions: unfinished jobs stay in the store and resume at the next run"
            );
            exit::CANT_CREATE
        }
        Ok(Outcome::ReportsUnwritten { runs }) => {
            tracing::error!(
                runs,
                "The report of some manifests could be written neither into the outbox nor into the archive (a full disk?): their outcome is in the store (`jobs --manifest NAME` lists it), and a report an earlier run left at their names was removed so that it is not taken for theirs; free space on the outbox's disk"
            );
            exit::CANT_CREATE
        }
        Ok(Outcome::Unscanned { folders }) => {
            let names: Vec<String> = folders
                .iter()
                .map(|f| Escaped::path(f).to_string())
                .collect();
            tracing::error!(
                folders = %names.join(", "),
                "Inbox folders could not be read, so what they hold was not processed: mend the cause the WARN of each names (permissions: give the daemon's user read and search access, e.g. `chmod g+rx` with the daemon's group; a path too long: move the folder up the tree), or move them out of the inbox; the rest of the inbox was processed"
            );
            exit::IO_ERR
        }
        Err(err) => {
            let err = anyhow::Error::from(err);
            tracing::error!(error = %format!("{err:#}"), "The daemon stops");
            exit::classify(&err)
        }
    }
}

/// What `validate` takes a file for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Manifest,
    Config,
    /// A folder recipe (`.claid.yaml`).
    Recipe,
    /// Unreadable as YAML, empty, or not a mapping: reported both ways.
    Unknown,
}

/// A mapping with `images` is a manifest, one with a config key a config; anything else that
/// parses as a mapping is taken for a manifest. Also the manifest's `profile`, if it names one.
fn kind_of(path: &Path) -> (FileKind, Option<String>) {
    // Only a regular file is read (a FIFO would wait for a writer for ever, a device never
    // ends).
    if !std::fs::metadata(path).is_ok_and(|meta| meta.is_file()) {
        return (FileKind::Unknown, None);
    }
    if path
        .file_name()
        .is_some_and(|name| name == manifest::RECIPE_NAME)
    {
        return (FileKind::Recipe, None);
    }
    // Larger than a manifest may be: refused for its size without being parsed (it was parsed
    // whole first: 25 MB took 20 s and 400 MB). Its first lines' top-level keys still tell a
    // padded config (refused as a config, for the config's own limit) from a manifest.
    if std::fs::metadata(path).is_ok_and(|m| m.len() > config::DEFAULT_MAX_MANIFEST_BYTES) {
        let mut head = Vec::new();
        let _ = std::fs::File::open(path).and_then(|file| {
            use std::io::Read as _;
            file.take(KIND_HEAD_BYTES).read_to_end(&mut head)
        });
        let kind = match kind_by_top_keys(&String::from_utf8_lossy(&head)) {
            FileKind::Config => FileKind::Config,
            _ => FileKind::Manifest,
        };
        return (kind, None);
    }
    let Ok(bytes) = std::fs::read(path) else {
        return (FileKind::Unknown, None);
    };
    let text = String::from_utf8_lossy(&bytes);
    // Bounded like the daemon's parsing, so a nesting bomb is refused at once, not in minutes.
    let bounds = yaml::value::Bounds {
        max_depth: yaml::MAX_DEPTH,
        max_entries: config::DEFAULT_MAX_IMAGES,
        long_list: None,
    };
    // Read as a manifest is (its `images` entries kept compact), so telling a 100,000-image
    // manifest from a config costs no map per image.
    let doc = match manifest::doc::parse(&text, yaml::value::Syntax::Yaml, &bounds) {
        Ok(doc) => doc,
        Err(yaml::ParseError {
            kind: yaml::ParseErrorKind::TooManyEntries { within, .. },
            ..
        }) if within == "images" => return (FileKind::Manifest, None),
        // Not YAML: its top-level keys, read line by line, still tell a config from a
        // manifest, so its problems are told as the file's kind (not both ways).
        Err(_) => return (kind_by_top_keys(&text), None),
    };
    let serde_json::Value::Object(map) = &doc.root else {
        return (FileKind::Unknown, None);
    };
    let profile = map
        .get("profile")
        .and_then(|p| p.as_str())
        .map(str::to_owned);
    if doc.images.is_some() || map.contains_key("images") {
        (FileKind::Manifest, profile)
    } else if config::TOP_KEYS.iter().any(|key| map.contains_key(*key)) {
        (FileKind::Config, None)
    } else {
        (FileKind::Manifest, profile)
    }
}

/// How much of a file too large to parse `kind_of` reads to see its top-level keys.
const KIND_HEAD_BYTES: u64 = 64 * 1024;

/// A file's kind from its top-level keys, read line by line (for text that is not YAML, or
/// too large to parse): `images` makes it a manifest, a config key a config.
fn kind_by_top_keys(text: &str) -> FileKind {
    let top_key = |line: &str| {
        line.split_once(':')
            .map(|(key, _)| key.trim_end().trim_start_matches('\u{feff}').to_owned())
            .filter(|key| !key.is_empty() && !key.starts_with([' ', '\t', '#', '-']))
    };
    let keys: Vec<String> = text.lines().filter_map(top_key).collect();
    let has = |key: &str| keys.iter().any(|k| k == key);
    if has("images") {
        FileKind::Manifest
    } else if config::TOP_KEYS.iter().any(|key| has(key)) {
        FileKind::Config
    } else {
        FileKind::Unknown
    }
}

/// Validates one file as a config, that its folders exist, and that its storages work (the
/// connector exists on Claid's side, the prefix can be listed); `true` when valid. A storage
/// that fails its check also gives the exit code of its cause (64, 69 or 77).
fn validate_config_file(file: &Path) -> (bool, Option<i32>) {
    match config::load(file) {
        Ok(config) => {
            let missing = daemon::check_folders(&config);
            if !missing.is_empty() {
                println!(
                    "{}: {} folder problem{}",
                    file.display(),
                    missing.len(),
                    if missing.len() == 1 { "" } else { "s" }
                );
                for problem in missing {
                    println!("  {problem}");
                }
                return (false, None);
            }
            // A folder on a filesystem mounted read-only stops the start (74): told here too.
            if let Some(problem) = daemon::read_only_folders(&config).into_iter().next() {
                println!("{}: folder problem\n  {problem}", file.display());
                return (false, Some(crate::exit::of_fatal(&problem)));
            }
            // The files the daemon reads at start, read as it reads them; a systemd credential
            // (`/run/credentials/…`) exists only for the running service and is left to it.
            let mut notes = Vec::new();
            let mut problems: Vec<(&str, String, i32)> =
                daemon::start_file_problems(&config, true, &mut notes)
                    .into_iter()
                    .map(|problem| (problem.what, problem.text, problem.code))
                    .collect();
            for note in notes {
                println!("  {note}");
            }
            // Files that let their holder act on the dashboard (release images held in doubt,
            // re-run drops): warned about like the API key when every user may read them.
            for warning in config::web_file_exposures(config.web.as_ref()) {
                println!("  warning: {warning}");
            }
            for warning in crate::storages::credential_warnings(&config.storages) {
                println!("  warning: {warning}");
            }
            // The storages are looked at over the network: only once the rest is right.
            if problems.is_empty()
                && let Err(err) = check_storages(&config)
            {
                let text = match err.hint() {
                    Some(hint) => format!("{err}\n  hint: {hint}"),
                    None => err.to_string(),
                };
                problems.push(("storage", text, err.exit_code()));
            }
            if let Some((_, _, code)) = problems.first() {
                let code = *code;
                for (what, text, _) in problems {
                    println!("{}: {what} problem", file.display());
                    println!("  {text}");
                }
                return (false, Some(code));
            }
            println!("{}: ok (config)", file.display());
            if config.api.unreachable_timeout < config.api.request_timeout {
                println!(
                    "  note: api.unreachable_timeout ({}) is shorter than api.request_timeout ({}): `run --once` gives up on a call still waiting after {}, even a slow upload that would have finished; keep it above the request timeout",
                    humantime::format_duration(config.api.unreachable_timeout),
                    humantime::format_duration(config.api.request_timeout),
                    humantime::format_duration(config.api.unreachable_timeout)
                );
            } else if config.api.unreachable_timeout < config.api.upload_timeout {
                println!(
                    "  note: api.unreachable_timeout ({}) is shorter than api.upload_timeout ({}): `run --once` gives up on an upload still waiting after {} when nothing else succeeded meanwhile; keep it above the upload timeout",
                    humantime::format_duration(config.api.unreachable_timeout),
                    humantime::format_duration(config.api.upload_timeout),
                    humantime::format_duration(config.api.unreachable_timeout)
                );
            }
            (true, None)
        }
        Err(err) => {
            println!("{err}");
            (false, None)
        }
    }
}

/// The daemon's start checks of the config's storages, for `validate`: the connector on Claid's
/// side (with the configured API; skipped for `embedded`, whose connectors are the storages
/// themselves, and without a readable key, said on stdout), then a listing of each prefix.
fn check_storages(config: &Config) -> Result<(), crate::storages::StorageError> {
    // A storage whose credentials are a systemd credential not here (it exists only for the
    // running service) is left to the start, as `validate` said in its notes.
    let seen: std::collections::BTreeMap<_, _> = config
        .storages
        .iter()
        .filter(|(_, entry)| {
            !entry
                .credentials_file
                .as_deref()
                .is_some_and(|path| path.starts_with("/run/credentials/") && !path.exists())
        })
        .map(|(name, entry)| (name.clone(), entry.clone()))
        .collect();
    if seen.is_empty() {
        return Ok(());
    }
    let storages = crate::storages::Storages::open(&seen)?;
    let client = match &config.api.base_url {
        config::BaseUrl::Embedded => None,
        config::BaseUrl::Url(url) => match config::load_api_key(&config.api) {
            Ok(Some(api_key)) => crate::claid::Client::new(crate::claid::ClientConfig {
                base_url: url.clone(),
                api_key,
                requests_per_second: config.api.requests_per_second,
                requests_per_minute: config.api.requests_per_minute,
                request_timeout: config.api.request_timeout,
                upload_timeout: config.api.upload_timeout,
                max_download_bytes: config.limits.max_download_bytes,
            })
            .ok(),
            Ok(None) => {
                println!(
                    "  note: no API key (api.api_key_file or CLAID_API_KEY), so the storage connectors on Claid's side were not checked"
                );
                None
            }
            Err(err) => {
                println!(
                    "  note: {err}, so the storage connectors on Claid's side were not checked"
                );
                None
            }
        },
    };
    let Ok(rt) = small_runtime() else {
        return Ok(());
    };
    rt.block_on(storages.check(client.as_ref())).map(drop)
}

/// The first part of `rel` (a folder or the file's own name) that starts with a dot.
fn hidden_part(rel: &Path) -> Option<String> {
    rel.components().find_map(|part| match part {
        std::path::Component::Normal(name) if name.as_encoded_bytes().first() == Some(&b'.') => {
            Some(name.to_string_lossy().into_owned())
        }
        _ => None,
    })
}

/// What `validate` checks a manifest or recipe against: the config's inbox (else the file's
/// folder), profiles, limits and storages (none without a config).
struct LoadParts {
    inbox: PathBuf,
    profiles: std::collections::BTreeMap<String, config::Profile>,
    limits: config::Limits,
    storages: std::collections::BTreeMap<String, config::StorageEntry>,
}

impl LoadParts {
    fn of(config: Option<&Config>, file: &Path) -> LoadParts {
        LoadParts {
            inbox: match config {
                Some(config) if file.starts_with(&config.folders.inbox) => {
                    config.folders.inbox.clone()
                }
                _ => file.parent().map(Path::to_path_buf).unwrap_or_default(),
            },
            profiles: config.map(|c| c.profiles.clone()).unwrap_or_default(),
            limits: config.map(|c| c.limits).unwrap_or_default(),
            storages: config.map(|c| c.storages.clone()).unwrap_or_default(),
        }
    }

    fn context<'a>(&'a self, config: Option<&'a Config>) -> manifest::LoadContext<'a> {
        manifest::LoadContext {
            inbox: &self.inbox,
            outbox: config.map(|c| c.folders.outbox.as_path()),
            profiles: &self.profiles,
            limits: &self.limits,
            storages: &self.storages,
        }
    }
}

/// What a manifest's check says of a storage destination when the config has no storages
/// (see `manifest::validate`): without `--config`, because none was read.
const NO_STORAGES: &str = "the config has no `storages`";

/// The hint after [`NO_STORAGES`] when no config was read: it blamed a config never given.
fn no_storages_hint() -> String {
    format!(
        "hint: no config was read, so no storage is known: give the config that defines its `storages` with --config FILE or CLAID_HOTFOLDER_CONFIG (the daemon's is {DEFAULT_CONFIG})"
    )
}

/// Validates one file as a manifest; `true` when valid. Without a config, a manifest that names
/// a profile gets a hint: the profile is unknown only because no config was read.
fn validate_manifest_file(config: Option<&Config>, file: &Path, profile: Option<&str>) -> bool {
    let parts = LoadParts::of(config, file);
    let inbox = parts.inbox.clone();
    match manifest::load(&parts.context(config), file) {
        Ok(spec) => {
            println!("{}: ok ({} images)", file.display(), spec.jobs.len());
            if let Some(hidden) = hidden_part(file.strip_prefix(&inbox).unwrap_or(file)) {
                println!(
                    "  note: the daemon never takes this file in: `{hidden}` starts with a dot (hidden files and folders are skipped as temporary); rename it without the dot"
                );
            }
            true
        }
        Err(err) => {
            let text = err.check_txt();
            print!("{text}");
            if let (None, Some(profile)) = (config, profile) {
                println!(
                    "hint: no config was read, so the profile `{profile}` is unknown: give the config that defines it with --config FILE or CLAID_HOTFOLDER_CONFIG (the daemon's is {DEFAULT_CONFIG})"
                );
            }
            if config.is_none() && text.contains(NO_STORAGES) {
                println!("{}", no_storages_hint());
            }
            false
        }
    }
}

/// Validates a folder recipe (`.claid.yaml`): its keys, profile, operations and output as they
/// apply to every image dropped beside it; `true` when valid.
fn validate_recipe_file(config: Option<&Config>, file: &Path) -> bool {
    let parts = LoadParts::of(config, file);
    match manifest::check_recipe(&parts.context(config), file) {
        Ok(()) => {
            println!(
                "{}: ok (folder recipe: every image dropped beside it is made with it)",
                file.display()
            );
            true
        }
        Err(err) => {
            let problems = err.problems();
            println!(
                "{}: folder recipe with {} problem{}",
                file.display(),
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            );
            for problem in problems {
                match problem.line {
                    Some(line) => println!("  line {line}: {}", problem.message),
                    None => println!("  {}", problem.message),
                }
            }
            if config.is_none() && problems.iter().any(|p| p.message.contains("profile")) {
                println!(
                    "hint: no config was read, so its profiles are unknown: give the config with --config FILE or CLAID_HOTFOLDER_CONFIG (the daemon's is {DEFAULT_CONFIG})"
                );
            }
            if config.is_none() && problems.iter().any(|p| p.message.contains(NO_STORAGES)) {
                println!("{}", no_storages_hint());
            }
            false
        }
    }
}

/// A file named on the command line that cannot be opened: 64 when it is missing, 77 when
/// access is refused.
fn check_readable(file: &Path, command: &str) -> anyhow::Result<()> {
    // Looked at before it is opened: opening a FIFO waits for a writer (for ever), and a
    // device or a pipe (`<(…)`) has no size to bound its reading by (`/dev/zero` was read
    // until memory ran out).
    if let Ok(meta) = std::fs::metadata(file)
        && !meta.is_file()
    {
        let what = if meta.is_dir() {
            "a folder"
        } else {
            "no regular file (a FIFO, a pipe such as `<(…)`, or a device)"
        };
        return Err(exit::Coded::new(
            exit::DATA_ERR,
            format!(
                "{} is {what}: `{command}` reads regular files only; save it to a file first, then give that file",
                file.display()
            ),
        )
        .into());
    }
    match std::fs::File::open(file) {
        Ok(_) => Ok(()),
        Err(cause) => {
            let code = match exit::of_io(&cause, exit::Access::Read) {
                exit::NO_PERM => exit::NO_PERM,
                _ => exit::USAGE,
            };
            let coded = exit::Coded::new(
                code,
                format!("cannot read {}: {}", file.display(), OsCause(&cause)),
            );
            Err(if code == exit::NO_PERM {
                coded.with_hint(access_hint(file, Some(command)))
            } else {
                coded
            }
            .into())
        }
    }
}

fn cmd_validate(config_path: Option<&Path>, files: &[PathBuf]) -> anyhow::Result<i32> {
    let config = match config_path {
        Some(path) => Some(load_config(path)?),
        None => config_among(files),
    };
    let mut n_bad = 0;
    let mut unreadable = None;
    for file in files {
        if let Err(err) = check_readable(file, "validate") {
            // Every file is still checked; the first unreadable one decides the exit code.
            eprintln!("error: {err:#}");
            if let Some(hint) = exit::hint(&err) {
                eprintln!("hint: {hint}");
            }
            unreadable.get_or_insert(exit::classify(&err));
            continue;
        }
        let file = std::path::absolute(file)
            .with_context(|| format!("cannot resolve {}", file.display()))?;
        let (kind, profile) = kind_of(&file);
        let ok = match kind {
            FileKind::Config => {
                let (ok, code) = validate_config_file(&file);
                if let Some(code) = code {
                    unreadable.get_or_insert(code);
                }
                ok
            }
            FileKind::Manifest => {
                validate_manifest_file(config.as_ref(), &file, profile.as_deref())
            }
            FileKind::Recipe => validate_recipe_file(config.as_ref(), &file),
            FileKind::Unknown => {
                println!(
                    "{}: neither a manifest nor a config can be read from it.",
                    file.display()
                );
                println!("As a manifest:");
                validate_manifest_file(config.as_ref(), &file, None);
                println!("As a config:");
                let _ = validate_config_file(&file);
                false
            }
        };
        if !ok {
            n_bad += 1;
        }
    }
    Ok(match unreadable {
        Some(code) => code,
        None if n_bad > 0 => exit::DATA_ERR,
        None => exit::OK,
    })
}

/// Without `--config`, the config among the files `validate` is given (one, and one that
/// loads), for the manifests and recipes among them: `validate config.yaml m.yaml` checked
/// the manifest without it (its storages "not configured", its profiles unknown).
fn config_among(files: &[PathBuf]) -> Option<Config> {
    let configs: Vec<&PathBuf> = files
        .iter()
        .filter(|file| file.is_file() && matches!(kind_of(file).0, FileKind::Config))
        .collect();
    let others = files
        .iter()
        .any(|file| !matches!(kind_of(file).0, FileKind::Config));
    let path = match configs.as_slice() {
        [path] if others => *path,
        [_, _, ..] if others => {
            println!(
                "Manifests are checked without a config: {} configs are among the files; name the one to use with `--config`.",
                configs.len()
            );
            return None;
        }
        _ => return None,
    };
    let config = match load_config(path) {
        Ok(config) => config,
        Err(err) => {
            println!(
                "Manifests are checked without the config {} given among the files: it cannot be used ({err:#}).",
                path.display()
            );
            return None;
        }
    };
    println!(
        "Manifests are checked with the config {} (given among the files; `--config` names one explicitly).",
        path.display()
    );
    Some(config)
}

/// The store, read from a private copy ([`Snapshot`]) for a command that only reads it while no
/// daemon answers on the admin socket. `None` when there is no store yet.
fn read_store(config: &Config, command: &str) -> anyhow::Result<Option<Snapshot>> {
    let state = &config.folders.state;
    match Snapshot::open(state) {
        Ok(snapshot) => Ok(snapshot),
        Err(StoreError::Locked { path }) => {
            let pid = std::fs::read_to_string(state.join(daemon::PID_FILE))
                .map(|p| p.trim().to_owned())
                .unwrap_or_else(|_| "unknown".to_owned());
            // `plan` never asks the daemon: its store is locked while it runs.
            if command == "plan" {
                return Err(anyhow::anyhow!(
                    "a daemon (PID {pid}) runs and holds the store {}, which `plan` reads only while no daemon runs (images the daemon already delivered are not billed again when it takes the manifest in)",
                    path.display()
                ));
            }
            Err(exit::Coded::new(
                exit::TEMP_FAIL,
                format!(
                    "a daemon (PID {pid}) holds the store {} but does not answer on the admin socket {}",
                    path.display(),
                    config.admin.socket.display()
                ),
            )
            .with_hint(
                "it may be starting or stopping: try again in a moment; if this persists, check that `admin.socket` in the config is the running daemon's",
            )
            .into())
        }
        Err(StoreError::Snapshot { path, cause }) => {
            let hint = (exit::of_io(&cause, exit::Access::Read) == exit::NO_PERM)
                .then(|| access_hint(&path, Some(command)));
            let err = anyhow::Error::from(StoreError::Snapshot { path, cause })
                .context("cannot read the job store");
            Err(match hint {
                Some(hint) => hinted(err, hint),
                None => err,
            })
        }
        Err(err) => Err(anyhow::Error::from(err).context("cannot read the job store")),
    }
}

/// Whether `on_output_exists` refuses even an empty file in the way (`fail`); `skip` replaces
/// an empty one, as no output to keep.
fn plan_fails_on_any(policy: crate::config::OnOutputExists) -> bool {
    policy == crate::config::OnOutputExists::Fail
}

fn cmd_plan(config_path: &Path, file: &Path) -> anyhow::Result<i32> {
    let config = load_config(config_path)?;
    check_readable(file, "plan")?;
    let file = std::path::absolute(file)?;
    let inbox = if file.starts_with(&config.folders.inbox) {
        config.folders.inbox.clone()
    } else {
        file.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    // Its place in the inbox decides its outputs and which images are unchanged: said for a
    // file outside it, whatever the plan finds.
    let outside = (!file.starts_with(&config.folders.inbox)).then(|| {
        format!(
            "({} is outside the inbox: planned as if dropped at the top of the inbox, as `{}`, with its local inputs looked for beside it; dropped into a folder of the inbox, its outputs go under that folder, and its unchanged images are those of that path.)",
            Escaped::path(&file),
            Escaped::str(&file.file_name().unwrap_or_default().to_string_lossy())
        )
    });
    let load_ctx = manifest::LoadContext {
        inbox: &inbox,
        outbox: Some(&config.folders.outbox),
        profiles: &config.profiles,
        limits: &config.limits,
        storages: &config.storages,
    };
    let spec = match manifest::load(&load_ctx, &file) {
        Ok(spec) => spec,
        Err(err) => {
            print!("{}", err.check_txt());
            if let Some(outside) = &outside {
                println!("{outside}");
            }
            return Ok(exit::DATA_ERR);
        }
    };
    // Unchanged images are found in the store; the plan is still useful without it.
    let (snapshot, no_store) = match read_store(&config, "plan") {
        Ok(Some(snapshot)) => (Some(snapshot), None),
        Ok(None) => (None, Some("there is no store yet".to_owned())),
        Err(err) => (None, Some(format!("{err:#}"))),
    };
    let rt = small_runtime()?;
    let (mut n_new, mut n_unchanged, mut n_uploads) = (0u64, 0u64, 0u64);
    // Rows whose result (or storage object) is taken again without a submit: `fetch`, `copy`.
    let mut n_fetched = 0u64;
    // Outputs already in the outbox that `on_output_exists` keeps (skip) or refuses (fail):
    // neither is submitted.
    let mut n_exists = 0u64;
    // New images the daemon would put in batches (with `api.batch.max_images` above 1).
    let mut n_batchable = 0u64;
    let connectors: std::collections::HashSet<String> = config
        .storages
        .values()
        .map(|storage| storage.claid_name.clone())
        .collect();
    let exists_plan = match config.on_output_exists {
        crate::config::OnOutputExists::Replace => None,
        crate::config::OnOutputExists::Skip => Some("kept"),
        crate::config::OnOutputExists::Fail => Some("fails"),
    };
    println!("{:>6}  {:<9}  {:<50}  output", "image", "plan", "input");
    let mut parsed = crate::manifest::ParsedBodies::default();
    for job in &spec.jobs {
        let body = parsed.get(&job.body);
        // As the daemon decides at registration: an output still there with the recorded
        // content, an object recorded in a storage, or a local copy fetched again from its
        // object are not submitted.
        let again = snapshot.as_ref().and_then(|snapshot| {
            match rt.block_on(snapshot.store().done_by_key(&job.key.hex())) {
                Ok(Some((_, prev))) => crate::pipeline::intake::unchanged_state(
                    &config.folders.outbox,
                    &config.storages,
                    &body,
                    &job.output_rel.to_string_lossy(),
                    &prev.state,
                ),
                _ => None,
            }
        });
        let refetch = matches!(again, Some(JobState::Downloading { .. }));
        // A result made but not written, fetched again from Claid (a storage output's object
        // is copied again, `copy`, as a local copy that is gone is).
        let kept = again.as_ref().is_some_and(|state| {
            matches!(
                state,
                JobState::Downloading {
                    kept_since_ms: Some(_),
                    ..
                }
            ) && !state.downloads_object()
        });
        let unchanged = again.is_some();
        let (input, local) = match &job.input {
            Input::Remote(url) => (url.clone(), false),
            Input::Local(file) => (file.rel.display().to_string(), true),
        };
        // (A kept result fetched again meets the policy at its write, as a new result does.)
        let exists = exists_plan.filter(|_| {
            (!unchanged || kept)
                && crate::storages::destination_of(&body, &job.output_rel.to_string_lossy())
                    .is_none()
                && std::fs::symlink_metadata(config.folders.outbox.join(&job.output_rel)).is_ok_and(
                    |meta| {
                        // An empty file is no output: `skip` replaces it (as the daemon does).
                        meta.is_file()
                            && (meta.len() > 0 || plan_fails_on_any(config.on_output_exists))
                    },
                )
        });
        let plan = if let Some(plan) = exists.filter(|_| kept) {
            n_exists += 1;
            plan
        } else if unchanged {
            if kept {
                n_fetched += 1;
                "fetch"
            } else if refetch {
                n_fetched += 1;
                "copy"
            } else {
                n_unchanged += 1;
                "unchanged"
            }
        } else if let Some(plan) = exists {
            n_exists += 1;
            plan
        } else {
            n_new += 1;
            if local {
                n_uploads += 1;
            }
            // As the daemon batches: URL inputs and those of a configured storage (a staged
            // file is one, named by its hash), when the output keeps the name a batch gives.
            let output_rel = job.output_rel.to_string_lossy();
            let batchable = if local {
                // Named as the daemon stages it (its hash stands for any).
                let named_as = crate::storages::Staging::named_as(&body, &output_rel);
                let staged = crate::storages::Staging::key_for("0", "0", &input, named_as);
                config.api.staging.is_some()
                    && crate::pipeline::batch::output_named_as_in_a_batch(
                        &staged,
                        &body,
                        &output_rel,
                    )
            } else {
                crate::pipeline::batch::batchable_input(&input, &connectors)
                    && crate::pipeline::batch::output_named_as_in_a_batch(
                        &input,
                        &body,
                        &output_rel,
                    )
            };
            if batchable {
                n_batchable += 1;
            }
            "new"
        };
        // Escaped as `jobs` shows them: a name derived from an input keeps a bidirectional
        // override or a line separator, which would turn or break the line on a terminal.
        println!(
            "{:>6}  {:<9}  {:<50}  {}",
            job.idx,
            plan,
            Escaped::str(&input).to_string(),
            Escaped::path(&job.output_rel)
        );
    }
    // With `api.staging`, local files are staged into the bucket (no API call) and submitted
    // like storage inputs instead of uploaded.
    let (n_staged, n_uploads) = match &config.api.staging {
        Some(_) => (n_uploads, 0),
        None => (0, n_uploads),
    };
    let n_async = n_new - n_uploads;
    // URL, storage and staged inputs go in batches of up to `cap` (after a canary of at most
    // CANARY_IMAGES); with webhooks, results are announced and polled only when late.
    let cap =
        config.api.batch.max_images.min(
            (config.api.max_in_flight.get() / crate::pipeline::batch::MAX_IN_FLIGHT_SHARE).max(1),
        ) as u64;
    let webhooks = config.webhook.is_some();
    let n_batched = if cap > 1 { n_batchable } else { 0 };
    let n_single = n_async - n_batched;
    let mut submits = Vec::new();
    if n_batched > 0 {
        let canary = n_batched.min(crate::pipeline::batch::CANARY_IMAGES as u64);
        let batches = 1 + (n_batched - canary).div_ceil(cap);
        submits.push(format!(
            "at least {batches} batch submits (up to {cap} images each)"
        ));
    }
    if n_single > 0 || n_batched == 0 {
        let why = if n_batched > 0 {
            " (inputs a batch does not take: URLs with a query string or fragment, or no file name, or a name that starts with a dot; storage connectors that are not in `storages`; storage outputs renamed)"
        } else {
            ""
        };
        submits.push(format!("{n_single} single submits{why}"));
    }
    let submits = submits.join(" + ");
    let polls = match (webhooks, n_batched > 0) {
        (true, _) => "polls only for results whose webhook is late".to_owned(),
        (false, true) if n_single == 0 => "a few polls per batch".to_owned(),
        (false, true) => format!(
            "a few polls per batch and about {} for the single submits",
            n_single + n_single / 5
        ),
        (false, false) => format!("about {} polls", n_single + n_single / 5),
    };
    println!();
    let fetched = match n_fetched {
        0 => String::new(),
        n => format!(", {n} fetched again without a new bill"),
    };
    println!(
        "{} images: {n_new} to process, {n_unchanged} unchanged{fetched}. API calls: {submits} + {polls} + {n_uploads} uploads.",
        spec.jobs.len(),
    );
    if let Some(plan) = exists_plan.filter(|_| n_exists > 0) {
        let what = if plan == "kept" {
            "are kept as they are (`on_output_exists: skip`)"
        } else {
            "fail without a submit (`on_output_exists: fail`)"
        };
        println!("{n_exists} outputs are in the outbox already and {what}.");
    }
    if let Some(storage) = config.api.staging.as_deref().filter(|_| n_staged > 0) {
        println!(
            "{n_staged} local files are staged into the storage `{storage}` first (no API call) and go in batches with the submits."
        );
    }
    if let Some(why) = no_store {
        println!("(unchanged images were not detected: {why})");
    }
    if let Some(outside) = outside {
        println!("{outside}");
    }
    Ok(exit::OK)
}

/// Asks the running daemon over its admin socket; `None` when no daemon answers there.
fn ask_daemon(
    config: &Config,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    command: &str,
) -> anyhow::Result<Option<(u16, Vec<u8>)>> {
    let rt = small_runtime()?;
    match rt.block_on(admin::request(&config.admin.socket, method, path, body)) {
        Ok(answer) => Ok(Some(answer)),
        Err(admin::AdminError::NotRunning { .. }) => Ok(None),
        // A daemon that dies while it answers (a `kill -9` a moment ago) breaks the
        // connection: a read goes to the store, which says whether a daemon still holds it.
        Err(admin::AdminError::Request { .. }) if method == "GET" => Ok(None),
        Err(err @ admin::AdminError::Denied { .. }) => Err(hinted(
            err,
            access_hint(&config.admin.socket, Some(command)),
        )),
        Err(err) => Err(err.into()),
    }
}

/// The daemon's answer, or its error with the row of the table its status belongs to.
fn from_daemon<T: serde::de::DeserializeOwned>(answer: (u16, Vec<u8>)) -> anyhow::Result<T> {
    let (status, body) = answer;
    if status != 200 {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        let code = match status {
            400 | 404 => exit::USAGE,
            409 => exit::TEMP_FAIL,
            500 => exit::IO_ERR,
            _ => exit::UNAVAILABLE,
        };
        return Err(exit::Coded::new(code, format!("the daemon answered: {message}")).into());
    }
    serde_json::from_slice(&body).map_err(|err| {
        anyhow::Error::from(err).context(exit::Coded::new(
            exit::UNAVAILABLE,
            "the daemon sent an answer this version cannot read (is it another version?)",
        ))
    })
}

/// `status`'s line about batches: switched off in this run (why), or the sizes sent lately;
/// nothing while none was sent with batching on (or when `max_images` is 1).
fn batching_line(b: &crate::pipeline::batch::BatchingView) -> Option<String> {
    if let Some(why) = &b.off_reason {
        return Some(format!(
            "batches: off for the rest of this run ({why}); images are sent one by one"
        ));
    }
    if !b.enabled || b.batches == 0 {
        return None;
    }
    let sizes: Vec<String> = b.recent_sizes.iter().map(usize::to_string).collect();
    Some(format!(
        "batches: {} sent ({} images); latest sizes {}{}",
        b.batches,
        b.images,
        sizes.join(", "),
        b.paced_size
            .map(|n| format!("; sized to Claid's pace: {n}"))
            .unwrap_or_default()
    ))
}

fn cmd_status(config_path: &Path, json: bool) -> anyhow::Result<i32> {
    let config = load_config(config_path)?;
    let mut no_store = false;
    let view: admin::StatusView = match ask_daemon(&config, "GET", "/status", None, "status")? {
        Some(answer) => from_daemon(answer)?,
        None => match read_store(&config, "status")? {
            Some(snapshot) => {
                small_runtime()?.block_on(admin::status_view(snapshot.store(), None))?
            }
            None => {
                no_store = true;
                admin::StatusView {
                    daemon: None,
                    manifests: Vec::new(),
                    older_runs_not_listed: false,
                }
            }
        },
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(exit::OK);
    }
    match &view.daemon {
        Some(d) => println!(
            "daemon: {}{}; {} in flight{}, {} queued, up {}s",
            d.health,
            d.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default(),
            d.in_flight,
            match d.awaiting_webhook {
                0 => String::new(),
                n => format!(", {n} waiting for a webhook to name the task of a lost submit"),
            },
            d.queued,
            d.uptime_secs
        ),
        None if no_store => println!(
            "daemon: not running; no store yet in {} (the daemon creates it when it first starts)",
            config.folders.state.display()
        ),
        None => println!("daemon: not running (read from the store)"),
    }
    if let Some(line) = view
        .daemon
        .as_ref()
        .and_then(|d| d.batching.as_ref())
        .and_then(batching_line)
    {
        println!("{line}");
    }
    if view.manifests.is_empty() {
        println!("No manifests in the store.");
        return Ok(exit::OK);
    }
    println!(
        "{:<40} {:>10} {:>7} {:>7} {:>9} {:>7} {:>8} {:>8} {:>9} {:>8} {:>6}  taken in (UTC)",
        "manifest",
        "state",
        "total",
        "done",
        "in flight",
        "queued",
        "failed",
        "in doubt",
        "img/min",
        "eta",
        "run"
    );
    for m in &view.manifests {
        // Nothing left to run but jobs held in doubt: the run waits for `replay --in-doubt`.
        let held = !m.finished && m.in_doubt > 0 && m.in_flight == 0 && m.queued == 0;
        println!(
            "{:<40} {:>10} {:>7} {:>7} {:>9} {:>7} {:>8} {:>8} {:>9} {:>8} {:>6}  {}",
            Escaped::str(&m.manifest).to_string(),
            if m.finished && m.superseded > 0 {
                "superseded"
            } else if m.finished {
                "finished"
            } else if held {
                "held"
            } else {
                "active"
            },
            m.total,
            m.done,
            m.in_flight,
            m.queued,
            m.failed,
            m.in_doubt,
            m.images_per_minute
                .map_or("-".to_owned(), |r| format!("{r:.1}")),
            if held {
                "-".to_owned()
            } else {
                m.eta_secs.map_or("-".to_owned(), |s| format!("{s}s"))
            },
            // Two runs of one file are told apart by their id and when each was taken in.
            m.id,
            m.registered_at_ms
                .map_or("-".to_owned(), crate::store::utc_seconds),
        );
    }
    if view.older_runs_not_listed {
        println!(
            "Older finished runs are not listed (every active run is, and the finished ones among the newest {} runs): their reports are in the outbox (or beside the archived manifest, where the outbox refused one), and `jobs --manifest PATH` lists a file's jobs.",
            admin::STATUS_RECENT
        );
    }
    for m in view.manifests.iter().filter(|m| m.superseded > 0) {
        println!(
            "{}: {} image(s) were left to a newer version of the file, not submitted or held in doubt (its report's `in_doubt` counts those Claid may have billed; `jobs --state superseded` lists them).",
            Escaped::str(&m.manifest),
            m.superseded
        );
    }
    if view.manifests.iter().any(|m| m.in_doubt > 0) {
        println!(
            "Jobs in doubt may have reached Claid: `claid-hotfolder jobs --state in-doubt` lists them, `replay --in-doubt` submits them again (Claid may bill twice)."
        );
    }
    Ok(exit::OK)
}

fn cmd_jobs(
    config_path: &Path,
    state: Option<StateName>,
    manifest: Option<&Path>,
) -> anyhow::Result<i32> {
    let config = load_config(config_path)?;
    let query = admin::JobsQuery {
        state: state.map(|s| s.as_str().to_owned()),
        manifest: manifest.map(|m| manifest_rel(&config, m)),
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
    let jobs: Vec<admin::JobView> = match ask_daemon(&config, "GET", &path, None, "jobs")? {
        Some(answer) => from_daemon(answer)?,
        None => match read_store(&config, "jobs")? {
            Some(snapshot) => {
                small_runtime()?.block_on(admin::jobs_view(snapshot.store(), &query))?
            }
            None => Vec::new(),
        },
    };
    if jobs.is_empty()
        && let Some(rel) = &query.manifest
        && !manifest_known(&config, rel)?
    {
        eprintln!(
            "error: no manifest `{}` in the store (give its path relative to the inbox, e.g. `spring/shoes.yaml`; see `status`)",
            Escaped::str(rel)
        );
        return Ok(exit::USAGE);
    }
    println!(
        "{:>20}  {:<11}  {:>8}  {:<44}  {:<30}  detail",
        "job", "state", "attempts", "input", "manifest"
    );
    for j in &jobs {
        // Names come from files and manifests: control characters are shown escaped.
        println!(
            "{:>20}  {:<11}  {:>8}  {:<44}  {:<30}  {}",
            j.id,
            j.state,
            j.attempts,
            Escaped::str(&j.input).to_string(),
            Escaped::str(&j.manifest).to_string(),
            Escaped::str(&j.detail)
        );
    }
    println!("{}", crate::text::count(jobs.len(), "job"));
    Ok(exit::OK)
}

/// `--manifest` as the store keys runs: relative to the inbox. A path given from the current
/// folder (`./m.yaml`) or through the inbox (`inbox/m.yaml`, `/srv/inbox/m.yaml`) is taken
/// for the same file.
fn manifest_rel(config: &Config, given: &Path) -> String {
    let inbox = &config.folders.inbox;
    let absolute = std::path::absolute(given).unwrap_or_else(|_| given.to_path_buf());
    let rel = absolute
        .strip_prefix(inbox)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| given.strip_prefix("./").unwrap_or(given).to_path_buf());
    rel.to_string_lossy().into_owned()
}

/// Whether any run of the manifest `rel` is in the store (asked when `jobs --manifest` lists
/// nothing, to tell a wrong path from a manifest without such jobs).
fn manifest_known(config: &Config, rel: &str) -> anyhow::Result<bool> {
    let path = format!("/jobs?manifest={}", url_encode(rel));
    let jobs: Vec<admin::JobView> = match ask_daemon(config, "GET", &path, None, "jobs")? {
        Some(answer) => from_daemon(answer)?,
        None => match read_store(config, "jobs")? {
            Some(snapshot) => small_runtime()?.block_on(admin::jobs_view(
                snapshot.store(),
                &admin::JobsQuery {
                    state: None,
                    manifest: Some(rel.to_owned()),
                },
            ))?,
            None => Vec::new(),
        },
    };
    Ok(!jobs.is_empty())
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
    since_ms: Option<u64>,
    dry_run: bool,
) -> anyhow::Result<i32> {
    let config = load_config(config_path)?;
    let req = admin::ReplayRequest {
        failed: select.failed,
        in_doubt: select.in_doubt,
        manifest: select.manifest.as_ref().map(|m| manifest_rel(&config, m)),
        job: select.job,
        since_ms,
        dry_run,
    };
    let body = serde_json::to_value(&req)?;
    // A dry run has a route of its own: a daemon too old to know it answers 404, never replays.
    let route = if dry_run {
        "/replay/preview"
    } else {
        "/replay"
    };
    let (answer, later) = match ask_daemon(&config, "POST", route, Some(&body), "replay")? {
        Some((404, _)) if dry_run => {
            return Err(exit::Coded::new(
                exit::UNAVAILABLE,
                "the running daemon is older than this command and cannot preview a replay; nothing was changed",
            )
            .with_hint("restart the daemon (systemctl restart claid-hotfolder), then run the dry run again")
            .into());
        }
        Some(answer) => (from_daemon::<admin::ReplayAnswer>(answer)?, false),
        None => {
            let state = &config.folders.state;
            // `exists` says false for a file it may not look at: a state folder this user
            // may not enter was taken for no store ("nothing to replay", 0) by a user newly
            // in the service's group; `try_exists` tells the refusal apart (77 with the hint).
            match state.join(crate::store::SCHEMA_DIR).join("db").try_exists() {
                Ok(true) => {}
                Ok(false) => {
                    println!(
                        "Nothing to replay: there is no store yet in {}.",
                        state.display()
                    );
                    return Ok(exit::OK);
                }
                Err(cause) => {
                    return Err(exit::Coded::new(
                        exit::of_io(&cause, exit::Access::Read),
                        format!(
                            "cannot look at the store in {}: {}",
                            state.display(),
                            OsCause(&cause)
                        ),
                    )
                    .with_hint(access_hint(state, Some("replay")))
                    .into());
                }
            }
            // A dry run writes nothing: it reads a private copy, as `jobs` does, so anyone
            // who may read the store may run it (not only its owner).
            if dry_run {
                let Some(snapshot) = read_store(&config, "replay")? else {
                    println!(
                        "Nothing to replay: there is no store yet in {}.",
                        state.display()
                    );
                    return Ok(exit::OK);
                };
                let answer = small_runtime()?.block_on(admin::replay_offline(
                    snapshot.store(),
                    (&config.folders.inbox, &config.folders.outbox),
                    &req,
                ))?;
                (answer, true)
            } else {
                check_owner(state)?;
                let store = open_store(&config)?;
                let answer = small_runtime()?.block_on(admin::replay_offline(
                    &store,
                    (&config.folders.inbox, &config.folders.outbox),
                    &req,
                ))?;
                (answer, true)
            }
        }
    };
    if dry_run && (!answer.preview.is_empty() || !answer.refused.is_empty()) {
        let done = answer.preview.iter().filter(|p| p.state == "done").count();
        // Failed after Claid took the task (a task-timeout, a download or write that failed):
        // Claid made, or may still make, the result it bills for.
        let taken = answer
            .preview
            .iter()
            .filter(|p| p.billed && p.state != "done")
            .count();
        let held = in_doubt_note(
            answer
                .preview
                .iter()
                .filter(|p| p.state == "in-doubt")
                .count(),
        );
        let billed = match (done, taken) {
            (0, 0) => String::new(),
            (done, 0) => format!("{done} of them done: sending those again is billed again"),
            (0, taken) => format!(
                "{taken} of them failed after Claid took their task, which it may have made and billed: sending those again may be billed twice"
            ),
            (done, taken) => format!(
                "{done} of them done and {taken} failed after Claid took their task: sending those again is billed again"
            ),
        };
        let refetch = refetch_note(answer.preview.iter().filter(|p| p.refetch).count());
        let notes = parenthesised(&[billed, refetch, held]);
        if !answer.preview.is_empty() {
            println!(
                "Would requeue {}{notes}; nothing was changed (run it again without --dry-run):",
                crate::text::count(answer.preview.len(), "job")
            );
        }
        for job in &answer.preview {
            let note = if job.refetch {
                "  (its result, made and billed, is fetched again: not billed again)"
            } else if job.billed && job.state != "done" {
                "  (Claid took its task: it may be billed already)"
            } else if job.state == "in-doubt" {
                "  (in doubt: Claid may have taken it)"
            } else {
                ""
            };
            println!(
                "  {:>8}  {:<9} {} -> {}{note}",
                job.id,
                job.state,
                Escaped::str(&job.input),
                Escaped::str(&job.output)
            );
        }
        for why in &answer.refused {
            println!("Would be refused: {why}.");
        }
        return Ok(exit::OK);
    }
    for why in &answer.refused {
        println!("Refused: {why}.");
    }
    if answer.requeued == 0 && !answer.refused.is_empty() {
        return Ok(exit::TEMP_FAIL);
    }
    if answer.requeued == 0 {
        let what = match (&select.manifest, select.in_doubt) {
            (Some(manifest), _) => format!("no finished or failed job of {}", manifest.display()),
            // Jobs of a run replaced by a newer one are never replayed (the newer run stands
            // for their images): `jobs` still lists them, so the message says which it means.
            (None, true) => "no job of a manifest's latest run is held in doubt (jobs of earlier runs, whose manifest was saved or dropped again since, are not replayed: the newer run stands for their images)".to_owned(),
            (None, false) => "no job of a manifest's latest run has failed (jobs of earlier runs, whose manifest was saved or dropped again since, are not replayed: the newer run stands for their images)".to_owned(),
        };
        let since = if since_ms.is_some() {
            " in that time"
        } else {
            ""
        };
        println!("Nothing to replay: {what}{since}.");
    } else {
        // Said, not asked: `--dry-run` lists them first.
        let billed = match answer.billed_again {
            0 => String::new(),
            n => format!(
                "{n} of them Claid had billed already, done or failed after it took their task: each is billed again"
            ),
        };
        let billed = parenthesised(&[
            billed,
            refetch_note(answer.refetched),
            in_doubt_note(answer.in_doubt_again),
        ]);
        if later {
            let they = if answer.requeued == 1 {
                "it runs"
            } else {
                "they run"
            };
            println!(
                "Requeued {}{billed}; {they} at the daemon's next start.",
                crate::text::count(answer.requeued, "job")
            );
        } else {
            println!(
                "Requeued {}{billed} in the running daemon.",
                crate::text::count(answer.requeued, "job")
            );
        }
    }
    Ok(exit::OK)
}

/// What `replay` and its dry run say of `n` jobs held in doubt among those requeued (nothing
/// for none).
fn in_doubt_note(n: usize) -> String {
    match n {
        0 => String::new(),
        n => format!(
            "{n} of them in doubt: Claid may have taken their submit, and sending them again may bill them twice"
        ),
    }
}

/// What a replay says of the jobs whose billed result it fetches again (`n` of them).
fn refetch_note(n: usize) -> String {
    match n {
        0 => String::new(),
        n => format!(
            "{n} of them made and billed but not written: their results are fetched again (from Claid, which keeps them a day, or from a storage output's bucket), not billed again, unless one is found gone or replaced there: that image is made again, and billed"
        ),
    }
}

/// The notes of a replay's count that say anything, in one parenthesis after it
/// (` (a; b)`), or nothing.
fn parenthesised(notes: &[String]) -> String {
    let said: Vec<&str> = notes
        .iter()
        .map(String::as_str)
        .filter(|note| !note.is_empty())
        .collect();
    if said.is_empty() {
        String::new()
    } else {
        format!(" ({})", said.join("; "))
    }
}

/// Opens the store for writing (`replay` while no daemon runs).
fn open_store(config: &Config) -> anyhow::Result<Store> {
    Store::open(&config.folders.state).map_err(|err| {
        let denied = matches!(&err, StoreError::Open { source: sled::Error::Io(cause), .. }
            if exit::of_io(cause, exit::Access::Write) == exit::NO_PERM);
        let hint = denied.then(|| access_hint(&config.folders.state, Some("replay")));
        let err = anyhow::Error::from(err);
        match hint {
            Some(hint) => hinted(err, hint),
            None => err,
        }
    })
}

/// `replay` writes the store: run by another user than its owner (root, typically), it would
/// leave files the daemon cannot open. Refused, naming the user to run it as.
fn check_owner(state: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(state.join(crate::store::SCHEMA_DIR)) else {
        return Ok(());
    };
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() == me {
        return Ok(());
    }
    let owner = account_name("/etc/passwd", meta.uid());
    Err(exit::Coded::new(
        exit::NO_PERM,
        format!(
            "the store {} belongs to {owner}; replay writes it, and files it created as another user could not be opened by the daemon",
            state.display()
        ),
    )
    .with_hint(format!("run it as {owner}: sudo -u {owner} {BIN_NAME} replay …"))
    .into())
}

/// What a user refused access to `path` can do: join the group that may use it, or run the
/// command as its owner. Looked up on `path` or the nearest folder above it that can be seen.
fn access_hint(path: &Path, command: Option<&str>) -> String {
    use std::os::unix::fs::MetadataExt;
    let Some(meta) = path.ancestors().find_map(|at| std::fs::metadata(at).ok()) else {
        return "check the permissions of its folders".to_owned();
    };
    let owner = account_name("/etc/passwd", meta.uid());
    let group = account_name("/etc/group", meta.gid());
    let run_as = match command {
        Some(command) => format!("sudo -u {owner} {BIN_NAME} {command} …"),
        None => format!("sudo -u {owner} {BIN_NAME} …"),
    };
    // The group may read a file, read and enter a folder, connect to a socket: joining it
    // is enough.
    let needs = if meta.is_dir() {
        0o050
    } else if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
        0o020
    } else {
        0o040
    };
    let group_may = meta.mode() & needs == needs;
    if meta.uid() == 0 && !group_may {
        return format!("it belongs to root: run the command as root ({run_as})");
    }
    if group_may && meta.gid() != 0 {
        format!(
            "join the group {group} (sudo usermod -a -G {group} $USER, then log in again), or run the command as {owner} ({run_as})"
        )
    } else {
        format!("run the command as {owner} ({run_as})")
    }
}

/// The name of a user or group id from `/etc/passwd` or `/etc/group` (`#ID`, the form `sudo -u`
/// takes, when it has none).
fn account_name(file: &str, id: u32) -> String {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                let found = fields.nth(1)?.parse::<u32>().ok()?;
                (found == id).then(|| name.to_owned())
            })
        })
        .unwrap_or_else(|| format!("'#{id}'"))
}

/// `--since`: an RFC 3339 time (`2026-11-29T10:00:00Z`) or a duration ago (`2h`), as
/// milliseconds since the epoch.
fn parse_since(text: &str) -> Result<u64, String> {
    let text = text.trim();
    // An offset (`+02:00`, what `date -Iseconds` prints off UTC): the time is read as UTC,
    // then moved by it.
    let (base, offset_s) = match text.len().checked_sub(6).map(|at| text.split_at(at)) {
        Some((base, zone))
            if base.contains('T')
                && zone.len() == 6
                && matches!(zone.as_bytes()[0], b'+' | b'-')
                && zone.as_bytes()[3] == b':'
                && let (Ok(h), Ok(m)) = (zone[1..3].parse::<i64>(), zone[4..6].parse::<i64>()) =>
        {
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            (format!("{base}Z"), sign * (h * 3600 + m * 60))
        }
        _ => (text.to_owned(), 0),
    };
    if let Ok(at) = humantime::parse_rfc3339_weak(&base) {
        if !base.ends_with(['Z', 'z']) {
            return Err(
                "give the time's zone: Z for UTC (2026-11-29T10:00:00Z) or an offset (2026-11-29T12:00:00+02:00)"
                    .to_owned(),
            );
        }
        let ms = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        return Ok((ms - offset_s * 1000).max(0) as u64);
    }
    let ago = humantime::parse_duration(text)
        .map_err(|_| "give a time like 2026-11-29T10:00:00Z or a duration like 2h".to_owned())?;
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
            .map_err(|cause| {
                exit::Coded::new(
                    exit::of_io(&cause, exit::Access::Create),
                    format!("cannot listen on {listen}: {}", OsCause(&cause)),
                )
            })?;
        let addr = listener.local_addr()?;
        println!("http://{addr}/v1");
        emulator::run(listener, scenario.into_scenario(), signal::shutdown(false))
            .await
            .context("emulator failed")?;
        Ok(exit::OK)
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
            .ok_or_else(|| users::UsersError::NotConfigured(config_path.to_path_buf()))?,
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
            if password.is_empty() {
                return Err(users::UsersError::NoPassword.into());
            }
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
    extra.control("SH", ["EXIT STATUS"]);
    for (code, name, meaning) in exit::TABLE {
        let name = if *name == "-" {
            String::new()
        } else {
            format!(" ({name})")
        };
        extra
            .control("TP", [])
            .text([bold(code.to_string())])
            .text([roman(format!("{meaning}{name}."))]);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A replay's notes read as one parenthesis after its count: "(2 of them done: …; 1 of
    /// them made and billed …)", not two side by side; none says nothing.
    #[test]
    fn a_replays_notes_are_one_parenthesis() {
        let notes = ["2 of them done".to_owned(), String::new(), refetch_note(1)];
        let said = parenthesised(&notes);
        assert!(
            said.starts_with(" (2 of them done; 1 of them made"),
            "{said}"
        );
        assert_eq!(
            said.matches(" (").count(),
            2,
            "the count's and the bucket's: {said}"
        );
        assert!(
            said.ends_with("that image is made again, and billed)"),
            "{said}"
        );
        assert_eq!(parenthesised(&[String::new(), in_doubt_note(0)]), "");
    }

    /// `--since` takes RFC 3339 times with `Z` or an offset (what `date -Iseconds` prints off
    /// UTC), and refuses one without a zone rather than guessing UTC.
    #[test]
    fn since_takes_a_zone_or_an_offset() {
        let utc = parse_since("2026-12-04T10:00:00Z").expect("Z");
        assert_eq!(parse_since("2026-12-04T12:00:00+02:00"), Ok(utc));
        assert_eq!(parse_since("2026-12-04T05:30:00-04:30"), Ok(utc));
        assert!(parse_since("2026-12-04T10:00:00").is_err_and(|e| e.contains("zone")));
        assert!(parse_since("2h").is_ok());
    }

    fn kind(text: &str) -> (FileKind, Option<String>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.yaml");
        std::fs::write(&path, text).expect("write");
        kind_of(&path)
    }

    #[test]
    fn validate_tells_manifests_from_configs_by_their_top_keys() {
        assert_eq!(
            kind("profile: web\nimages:\n  - a.jpg\n  - input: b.jpg\n"),
            (FileKind::Manifest, Some("web".to_owned()))
        );
        assert_eq!(
            kind("{\"images\": [\"a.jpg\"]}"),
            (FileKind::Manifest, None)
        );
        assert_eq!(kind("images: not-a-list\n").0, FileKind::Manifest);
        assert_eq!(kind("api:\n  max_in_flight: 8\n").0, FileKind::Config);
        assert_eq!(kind("operations: {}\n").0, FileKind::Manifest);
        assert_eq!(kind("- a\n- b\n").0, FileKind::Unknown);
        assert_eq!(kind("a: [\n").0, FileKind::Unknown);
        // More images than any manifest may hold is still a manifest (refused as one).
        let mut many = String::from("images:\n");
        for i in 0..=config::DEFAULT_MAX_IMAGES {
            many.push_str(&format!("  - i{i}.jpg\n"));
        }
        assert_eq!(kind(&many).0, FileKind::Manifest);
    }
}
