//! The configuration: the YAML of config/claid-hotfolder.yaml (see `config/claid-hotfolder.yaml`) turned into a
//! validated [`Config`], with environment overrides layered over it.
//!
//! Loading never stops at the first problem: unknown keys (with a "did you mean" hint), wrong
//! types, bad durations, zero limits, missing folders and profiles whose operations fail the
//! request schema are all collected, each with its dotted key and line, into one
//! [`ConfigError::Invalid`]. `CLAID_HOTFOLDER_CONFIG` is read by the CLI, not here.
//!
//! The text is parsed by `yaml` into a `serde_json::Value`; `env` layers the
//! `CLAID_HOTFOLDER__*` variables over it; `check` turns the value into a [`Config`] key by key;
//! `schema` knows the key tree and suggests the key an unknown one meant.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::yaml;
use crate::yaml::lines::LineMap;
use crate::yaml::value::Bounds;

mod check;
pub use check::folder_overlaps;
pub(crate) use check::identity;
mod env;
pub mod print;
mod schema;
pub mod web;

/// A config nests like a manifest ([`yaml::MAX_DEPTH`]); its lists are the operator's own.
const BOUNDS: Bounds = Bounds {
    max_depth: yaml::MAX_DEPTH,
    max_entries: usize::MAX,
    long_list: None,
};

/// Exit code for a bad configuration (EX_USAGE).
pub const EX_CONFIG: i32 = 64;

/// Environment variable holding the API key when `api.api_key_file` is not set.
pub const ENV_API_KEY: &str = "CLAID_API_KEY";

/// Defaults (config/claid-hotfolder.yaml).
pub const DEFAULT_BASE_URL: &str = "https://api.claid.ai/v1";
pub const DEFAULT_REQUESTS_PER_SECOND: u32 = 4;
pub const DEFAULT_REQUESTS_PER_MINUTE: u32 = 120;
pub const DEFAULT_MAX_IN_FLIGHT: usize = 32;
pub const DEFAULT_MAX_DOWNLOADS: usize = 8;
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a synchronous upload waits for its answer by default: Claid edits the image
/// before it answers, and an upload given up on is in doubt (resent, maybe billed twice).
pub const DEFAULT_UPLOAD_TIMEOUT: Duration = Duration::from_secs(120);
pub const DEFAULT_UNREACHABLE_TIMEOUT: Duration = Duration::from_secs(120);
pub const DEFAULT_POLL_MIN: Duration = Duration::from_secs(1);
pub const DEFAULT_POLL_MAX: Duration = Duration::from_secs(30);
/// Default `api.poll.give_up_after`: Claid's tasks take seconds and a batch of 100 minutes, so
/// two hours unfinished is a task that will not end.
pub const DEFAULT_POLL_GIVE_UP_AFTER: Duration = Duration::from_secs(2 * 3600);
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(2);
pub const DEFAULT_RESCAN: Duration = Duration::from_secs(60);
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/claid-hotfolder/admin.sock";
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
pub const DEFAULT_MAX_MANIFEST_BYTES: u64 = 16 * 1024 * 1024;
pub const DEFAULT_MAX_IMAGES: usize = 100_000;
pub const DEFAULT_MAX_DOWNLOAD_BYTES: u64 = 256 * 1024 * 1024;
/// Largest local input uploaded or staged: each is read whole (once per image in flight).
pub const DEFAULT_MAX_INPUT_BYTES: u64 = 256 * 1024 * 1024;

/// The validated configuration. Folders are absolute.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub api: ApiConfig,
    pub folders: Folders,
    pub watch: WatchConfig,
    pub on_manifest_done: OnManifestDone,
    pub on_output_exists: OnOutputExists,
    pub in_doubt: InDoubtPolicy,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub limits: Limits,
    /// How long SIGTERM waits for in-flight steps before parking them for the next start.
    pub shutdown_grace: Duration,
    /// Named operation/output sets that manifests refer to with `profile:`.
    pub profiles: BTreeMap<String, Profile>,
    /// The dashboard; `None` = off.
    /// `webhook`: Claid's signed result announcements; `None` = off (results are polled).
    pub webhook: Option<crate::webhook::WebhookConfig>,
    pub web: Option<web::WebConfig>,
    /// Where alerts go; empty = none.
    pub alerts: Vec<web::AlertSink>,
    /// `storages`: buckets shared with Claid's storage connectors, by the name manifests use
    /// in `storage://NAME/…`; empty = none.
    pub storages: BTreeMap<String, StorageEntry>,
}

/// Default signing region of a storage.
pub const DEFAULT_STORAGE_REGION: &str = "us-east-1";

/// One `storages.NAME` entry: a Claid storage connector and the daemon's own access to the same
/// bucket and prefix. The keys themselves are never part of a [`Config`]: they are read from
/// `credentials_file` (or the `AWS_*` variables) when the daemon or `validate` opens the storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageEntry {
    /// The connector's name on Claid's side (`GET /v1/storage/storages`).
    pub claid_name: String,
    /// `s3://` (Amazon S3 or S3-compatible) or `gs://` (Google Cloud Storage).
    pub provider: crate::objects::Provider,
    /// The bucket and prefix the connector points at (`s3://bucket/prefix`).
    pub bucket: String,
    /// Without slashes at its ends; empty for the whole bucket.
    pub prefix: String,
    /// An S3-compatible endpoint (`http(s)://host:port`); `None` = Amazon S3.
    pub endpoint: Option<String>,
    /// Signing region (`us-east-1` by default).
    pub region: String,
    /// For `s3://`: YAML with `access_key_id` and `secret_access_key`; `None` = the `AWS_*`
    /// variables. For `gs://`: a service account's JSON key; `None` = the file
    /// `GOOGLE_APPLICATION_CREDENTIALS` names.
    pub credentials_file: Option<PathBuf>,
    /// Storage outputs are also downloaded into the outbox, as local outputs are.
    pub output_local_copy: bool,
    /// This storage is `api.staging`: its `staging/` folder holds the daemon's staged inputs
    /// (deleted once their jobs end), so manifests may neither read from nor write into it.
    pub staging: bool,
}

impl StorageEntry {
    /// `s3://bucket/prefix` (or `gs://…`).
    pub fn url(&self) -> String {
        let scheme = self.provider.scheme();
        if self.prefix.is_empty() {
            format!("{scheme}://{}", self.bucket)
        } else {
            format!("{scheme}://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// Where the Claid API is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseUrl {
    /// Start the bundled emulator in-process on loopback (demo and tests).
    Embedded,
    /// An `http(s)://` base, without a trailing slash (e.g. `https://api.claid.ai/v1`).
    Url(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiConfig {
    pub base_url: BaseUrl,
    /// File holding the API key (systemd credential); `None` → `$CLAID_API_KEY`.
    pub api_key_file: Option<PathBuf>,
    /// Client-side limit on all API calls, per second.
    pub requests_per_second: NonZeroU32,
    /// Client-side limit on all API calls, per minute.
    pub requests_per_minute: NonZeroU32,
    /// Tasks submitted and not yet finished; bounds the work Claid holds for us.
    pub max_in_flight: NonZeroUsize,
    /// Concurrent result downloads.
    pub max_downloads: NonZeroUsize,
    pub request_timeout: Duration,
    /// How long a synchronous upload (a local file, edited before Claid answers) waits for
    /// its answer; never less than `request_timeout`.
    pub upload_timeout: Duration,
    pub poll: PollConfig,
    /// `run --once` gives up when no API call has succeeded for this long (unfinished jobs
    /// stay in the store); the daemon keeps waiting.
    pub unreachable_timeout: Duration,
    /// `api.batch`: URL inputs with the same body go to Claid in one batch request.
    pub batch: BatchConfig,
    /// `api.staging`: the storage (a key of `storages`) local inputs are uploaded to, so they
    /// go to Claid in batches as `storage://` inputs; `None` = the synchronous upload endpoint.
    pub staging: Option<String>,
    /// `api.staging_delete`: staged objects are deleted once no unfinished job needs them.
    pub staging_delete: bool,
}

/// `api.batch`: how URL inputs are grouped into batch requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Images per batch at most; 1 turns batching off.
    pub max_images: usize,
    /// How long an open batch waits for more jobs with the same body once the queue is empty.
    pub linger: Duration,
}

impl Default for BatchConfig {
    fn default() -> BatchConfig {
        BatchConfig {
            max_images: 100,
            linger: Duration::from_millis(250),
        }
    }
}

/// Bounds of the poll interval of one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollConfig {
    pub min: Duration,
    pub max: Duration,
    /// How long a task (or batch) may stay unfinished at Claid before its jobs fail as
    /// `task-timeout`: every wait ends.
    pub give_up_after: Duration,
}

/// The folders; absolute after loading (relative ones resolve against the config's directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folders {
    pub inbox: PathBuf,
    pub outbox: PathBuf,
    pub archive: PathBuf,
    pub rejected: PathBuf,
    pub state: PathBuf,
    /// Create a missing inbox, outbox, archive or rejected folder at start. Off by default, so
    /// a typo in a path stops the daemon instead of creating a folder nobody drops files into.
    /// The state folder is always created.
    pub create: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchConfig {
    /// A file must be unchanged this long before it is read.
    pub settle: Duration,
    /// Period of the full inbox scan; notify events only wake it early.
    pub rescan: Duration,
    /// No notify at all (network shares that send no events).
    pub poll_only: bool,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            settle: DEFAULT_SETTLE,
            rescan: DEFAULT_RESCAN,
            poll_only: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnManifestDone {
    Archive,
    Delete,
    Keep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnOutputExists {
    Replace,
    Skip,
    Fail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InDoubtPolicy {
    Resubmit,
    Hold,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// HTTP over this Unix socket (status, jobs, replay, metrics).
    pub socket: PathBuf,
    /// Also serve `/metrics` over TCP here when set.
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogConfig {
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Manifests larger than this are rejected before parsing.
    pub max_manifest_bytes: u64,
    /// Manifests with more images are rejected.
    pub max_images: usize,
    /// Result downloads larger than this fail the job.
    pub max_download_bytes: u64,
    /// Local inputs larger than this are refused at intake (each is read whole to be sent).
    pub max_input_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_manifest_bytes: DEFAULT_MAX_MANIFEST_BYTES,
            max_images: DEFAULT_MAX_IMAGES,
            max_download_bytes: DEFAULT_MAX_DOWNLOAD_BYTES,
            max_input_bytes: DEFAULT_MAX_INPUT_BYTES,
        }
    }
}

/// A named set of operations and output options; manifests deep-merge over it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Profile {
    /// An object (`{}` when the profile sets none).
    pub operations: Value,
    pub output: Option<Value>,
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted key (`api.poll.min`); empty for the whole file.
    pub key: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong and what to do.
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot read config file {}: {}",
        crate::text::Escaped::path(path),
        crate::os_error::OsCause(cause)
    )]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}", render_problems(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<ConfigProblem>,
    },
    #[error(
        "`api.api_key_file`: cannot read {}: {}",
        crate::text::SecretFilePath(path),
        crate::os_error::OsCause(cause)
    )]
    ApiKeyFile {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "`api.api_key_file`: {} is empty; put the Claid API key in it",
        crate::text::Escaped::path(path)
    )]
    ApiKeyEmpty { path: PathBuf },
    #[error(
        "`api.api_key_file`: {} holds more than the key (line {line} is not the key's, or the key has a space or control character); put the Claid API key alone on one line",
        crate::text::Escaped::path(path)
    )]
    ApiKeyMalformed { path: PathBuf, line: usize },
}

impl ConfigError {
    /// Stable kebab-case code.
    pub fn code(&self) -> &'static str {
        match self {
            ConfigError::Read { .. } => "config-unreadable",
            ConfigError::Invalid { .. } => "config-invalid",
            ConfigError::ApiKeyFile { .. } => "api-key-unreadable",
            ConfigError::ApiKeyEmpty { .. } => "api-key-empty",
            ConfigError::ApiKeyMalformed { .. } => "api-key-malformed",
        }
    }

    /// The problems of an invalid config (empty for the other variants).
    pub fn problems(&self) -> &[ConfigProblem] {
        match self {
            ConfigError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

fn render_problems(path: &Path, problems: &[ConfigProblem]) -> String {
    let mut out = format!(
        "invalid config {} ({} problem{})",
        path.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for problem in problems {
        out.push_str("\n  ");
        out.push_str(&path.display().to_string());
        if let Some(line) = problem.line {
            let _ = write!(out, ":{line}");
        }
        if problem.key.is_empty() {
            let _ = write!(out, ": {}", problem.message);
        } else {
            let _ = write!(out, ": `{}`: {}", problem.key, problem.message);
        }
    }
    out
}

/// The largest config file read (a config is a few KB; its profiles a few more).
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Reads and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    use std::io::Read;
    let read_err = |cause| ConfigError::Read {
        path: path.to_owned(),
        cause,
    };
    // A FIFO's open waits for a writer, for ever when none comes (`validate`, `plan` and
    // `run` hung on one: acceptance run).
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        let kind = meta.file_type();
        if kind.is_fifo() || kind.is_socket() || kind.is_dir() {
            return Err(read_err(std::io::Error::other(
                "it is not a regular file (a FIFO, a pipe, a socket or a folder); save the config to a file and give that file",
            )));
        }
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes))
        .map_err(read_err)?;
    let origin = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()
            .map(|dir| dir.join(path))
            .unwrap_or_else(|_| path.to_owned())
    };
    // Read no further than that: `/dev/zero`, a huge file, a pipe that never ends.
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ConfigError::Invalid {
            path: origin,
            problems: vec![ConfigProblem {
                key: String::new(),
                line: None,
                message: format!(
                    "the config is larger than {} KiB (a config is a few KB); is this the right file?",
                    MAX_CONFIG_BYTES / 1024
                ),
            }],
        });
    }
    // Not UTF-8 (a Latin-1 editor, a binary file): a problem with its line, not a bare
    // "cannot read" that hides the reason.
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(err) => {
            let valid = &err.as_bytes()[..err.utf8_error().valid_up_to()];
            let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
            return Err(ConfigError::Invalid {
                path: origin,
                problems: vec![ConfigProblem {
                    key: String::new(),
                    line: Some(line),
                    message: format!(
                        "the config is not UTF-8 text (invalid byte at offset {}); save it as UTF-8",
                        valid.len()
                    ),
                }],
            });
        }
    };
    parse_with_env(&text, &origin, std::env::vars())
}

/// Validates config text without environment overrides; `origin` is the file it came from
/// (relative folders resolve against its directory, and messages name it).
pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
    parse_with_env(text, origin, std::iter::empty())
}

/// Validates config text, then layers `CLAID_HOTFOLDER__SECTION__KEY` variables from `env`
/// over it (values are YAML scalars or flow collections: `8`, `2s`, `true`, `{ min: 1s }`).
pub fn parse_with_env(
    text: &str,
    origin: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let mut checker = check::Checker::default();
    let mut env_keys: Vec<(String, String)> = Vec::new();
    let parsed = yaml::parse(text, &BOUNDS).map(|mut value| {
        env_keys = env::apply_env(&mut value, env);
        value
    });
    let config = match parsed {
        Ok(Value::Null) => {
            checker.problem("", "the config file is empty; it needs at least `folders`");
            None
        }
        Ok(value) => checker.config(&value, origin),
        Err(err) => {
            checker.problems.push(ConfigProblem {
                key: String::new(),
                line: err.line,
                message: crate::text::unsafe_escaped(format!("not valid YAML: {}", err.message)),
            });
            None
        }
    };
    match config {
        Some(config) if checker.problems.is_empty() => Ok(config),
        _ => {
            let lines = LineMap::build(text);
            let mut problems = checker.problems;
            for problem in &mut problems {
                let from_env = env_keys.iter().find(|(key, _)| {
                    problem.key == *key || problem.key.starts_with(&format!("{key}."))
                });
                if let Some((_, var)) = from_env {
                    problem.message.push_str(&format!(" (set by ${var})"));
                } else if problem.line.is_none() && !problem.key.is_empty() {
                    problem.line = lines.line(&problem.key);
                    // A section only a variable made (`CLAID_HOTFOLDER__APII__X`): not in the
                    // file, so the variable is named (the file was blamed for a key it lacks).
                    if problem.line.is_none()
                        && let Some((_, var)) = env_keys
                            .iter()
                            .find(|(key, _)| key.starts_with(&format!("{}.", problem.key)))
                    {
                        problem.message.push_str(&format!(" (set by ${var})"));
                    }
                }
            }
            problems.sort_by_key(|problem| problem.line.unwrap_or(0));
            Err(ConfigError::Invalid {
                path: origin.to_owned(),
                problems,
            })
        }
    }
}

/// Prefix of environment overrides: `CLAID_HOTFOLDER__API__MAX_IN_FLIGHT=8` sets
/// `api.max_in_flight` (double underscores separate the levels; names are lowercased).
pub const ENV_PREFIX: &str = "CLAID_HOTFOLDER__";

/// Reads the API key: `api_key_file` when set, else `$CLAID_API_KEY`. Never logged.
pub fn load_api_key(api: &ApiConfig) -> Result<Option<String>, ConfigError> {
    if let Some(path) = &api.api_key_file {
        let text =
            crate::objects::read_small_file(path).map_err(|cause| ConfigError::ApiKeyFile {
                path: path.clone(),
                cause,
            })?;
        // A byte-order mark (an editor's UTF-8 "with BOM") is no part of the key.
        let key = text.trim_start_matches('\u{feff}').trim();
        if key.is_empty() {
            return Err(ConfigError::ApiKeyEmpty { path: path.clone() });
        }
        crate::text::register_secret(key);
        // A second line (a note, a second key) or a character no header may carry: the start
        // would refuse it while building the client, with no word of the file.
        if let Some(at) = key.find(|c: char| c.is_whitespace() || c.is_control()) {
            let pos = text.find(key).unwrap_or(0) + at;
            let line = text[..pos].matches('\n').count() + 1;
            let line = if key[at..].starts_with(['\n', '\r']) {
                line + 1
            } else {
                line
            };
            return Err(ConfigError::ApiKeyMalformed {
                path: path.clone(),
                line,
            });
        }
        return Ok(Some(key.to_owned()));
    }
    let key = std::env::var(ENV_API_KEY)
        .ok()
        .map(|key| key.trim().to_owned())
        .filter(|key| !key.is_empty());
    if let Some(key) = &key {
        crate::text::register_secret(key);
    }
    Ok(key)
}

/// A warning when every user of this machine may read or replace the secret file at `path`
/// (`what`, holding `secret`): the fix is `chmod o-rwx`. `None` when only its owner and group
/// may, or it cannot be read.
pub fn exposure(path: &Path, what: &str, secret: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    // Only a file holds a secret: a folder named instead is refused as no file, not warned
    // about for its mode (told to `chmod` it).
    let meta = std::fs::metadata(path)
        .ok()
        .filter(std::fs::Metadata::is_file)?;
    let mode = meta.permissions().mode() & 0o7777;
    let may = match (mode & 0o004 != 0, mode & 0o002 != 0) {
        (true, true) => "read and replace",
        (true, false) => "read",
        (false, true) => "replace",
        (false, false) => return None,
    };
    Some(format!(
        "Every user of this machine may {may} {what} (mode {mode:04o}); `chmod o-rwx` it (0600, or 0640 with the daemon's group) so that only the daemon can read {secret}"
    ))
}

/// The warning about an `api.api_key_file` every user may read (see [`exposure`]).
pub fn api_key_exposure(api: &ApiConfig) -> Option<String> {
    let path = api.api_key_file.as_deref()?;
    let why = exposure(path, "the API key file", "the key")?;
    Some(format!(
        "`api.api_key_file` {}: {why}",
        crate::text::Escaped::path(path)
    ))
}

/// Warnings about the dashboard's token and users files when every user may read them (see
/// [`exposure`]): they let their holder act on the dashboard (release images held in doubt,
/// re-run drops). A file that cannot be read (a systemd credential) gives none.
pub fn web_file_exposures(web: Option<&web::WebConfig>) -> Vec<String> {
    let Some(web) = web else {
        return Vec::new();
    };
    [
        ("web.token_file", &web.token_file),
        ("web.users_file", &web.users_file),
    ]
    .into_iter()
    .filter_map(|(key, path)| {
        let path = path.as_deref()?;
        let why = exposure(path, "this file", "it")?;
        Some(format!(
            "`{key}` {}: {why}",
            crate::text::Escaped::path(path)
        ))
    })
    .collect()
}

/// Every dotted key a config file may hold, sections included (`api`, `api.poll.min`);
/// `profiles.*.operations` stands for every profile's.
pub fn known_keys() -> Vec<String> {
    schema::all_keys()
}

/// The top-level keys of a config file (`validate` tells configs from manifests by them).
pub const TOP_KEYS: &[&str] = &[
    "api",
    "folders",
    "watch",
    "on_manifest_done",
    "on_output_exists",
    "in_doubt",
    "admin",
    "log",
    "limits",
    "shutdown_grace",
    "profiles",
    "webhook",
    "web",
    "alerts",
    "storages",
];
