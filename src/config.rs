//! The configuration: `RawConfig` mirrors the YAML of SPEC §3; `Config` holds validated values.
//!
//! Loading never stops at the first problem: unknown keys (with a "did you mean" hint), wrong
//! types, bad durations, zero limits, missing folders and profiles whose operations fail the
//! request schema are all collected, each with its dotted key and line, into one
//! [`ConfigError::Invalid`]. `CLAID_HOTFOLDER_CONFIG` is read by the CLI, not here.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::claid::request::{self, InputRule};
use crate::yaml::lines::LineMap;
use crate::yaml::value::Bounds;
use crate::yaml::{self, kind};

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

/// Defaults (SPEC §3).
pub const DEFAULT_BASE_URL: &str = "https://api.claid.ai/v1";
pub const DEFAULT_REQUESTS_PER_SECOND: u32 = 4;
pub const DEFAULT_REQUESTS_PER_MINUTE: u32 = 120;
pub const DEFAULT_MAX_IN_FLIGHT: usize = 32;
pub const DEFAULT_MAX_DOWNLOADS: usize = 8;
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_POLL_MIN: Duration = Duration::from_secs(1);
pub const DEFAULT_POLL_MAX: Duration = Duration::from_secs(30);
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(2);
pub const DEFAULT_RESCAN: Duration = Duration::from_secs(60);
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/claid-hotfolder/admin.sock";
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
pub const DEFAULT_MAX_MANIFEST_BYTES: u64 = 16 * 1024 * 1024;
pub const DEFAULT_MAX_IMAGES: usize = 100_000;
pub const DEFAULT_MAX_DOWNLOAD_BYTES: u64 = 256 * 1024 * 1024;

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
    pub poll: PollConfig,
}

/// Bounds of the poll interval of one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollConfig {
    pub min: Duration,
    pub max: Duration,
}

/// The folders; absolute after loading (relative ones resolve against the config's directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folders {
    pub inbox: PathBuf,
    pub outbox: PathBuf,
    pub archive: PathBuf,
    pub rejected: PathBuf,
    pub state: PathBuf,
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_manifest_bytes: DEFAULT_MAX_MANIFEST_BYTES,
            max_images: DEFAULT_MAX_IMAGES,
            max_download_bytes: DEFAULT_MAX_DOWNLOAD_BYTES,
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

/// The YAML exactly as written (SPEC §3). Every field is optional here; defaults and checks
/// are applied when it becomes a [`Config`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub api: Option<RawApi>,
    pub folders: Option<RawFolders>,
    pub watch: Option<RawWatch>,
    pub on_manifest_done: Option<OnManifestDone>,
    pub on_output_exists: Option<OnOutputExists>,
    pub in_doubt: Option<InDoubtPolicy>,
    pub admin: Option<RawAdmin>,
    pub log: Option<RawLog>,
    pub limits: Option<RawLimits>,
    pub shutdown_grace: Option<String>,
    pub profiles: Option<BTreeMap<String, RawProfile>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    pub base_url: Option<String>,
    pub api_key_file: Option<PathBuf>,
    pub requests_per_second: Option<u32>,
    pub requests_per_minute: Option<u32>,
    pub max_in_flight: Option<usize>,
    pub max_downloads: Option<usize>,
    pub request_timeout: Option<String>,
    pub poll: Option<RawPoll>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPoll {
    pub min: Option<String>,
    pub max: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFolders {
    pub inbox: Option<PathBuf>,
    pub outbox: Option<PathBuf>,
    pub archive: Option<PathBuf>,
    pub rejected: Option<PathBuf>,
    pub state: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWatch {
    pub settle: Option<String>,
    pub rescan: Option<String>,
    pub poll_only: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub socket: Option<PathBuf>,
    pub metrics_listen: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<LogFormat>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_manifest_bytes: Option<u64>,
    pub max_images: Option<usize>,
    pub max_download_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    pub operations: Option<Value>,
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
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render_problems(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<ConfigProblem>,
    },
    #[error("cannot read api key file {path}")]
    ApiKeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("api key file {path} is empty")]
    ApiKeyEmpty { path: PathBuf },
}

impl ConfigError {
    /// Stable kebab-case code.
    pub fn code(&self) -> &'static str {
        match self {
            ConfigError::Read { .. } => "config-unreadable",
            ConfigError::Invalid { .. } => "config-invalid",
            ConfigError::ApiKeyFile { .. } => "api-key-unreadable",
            ConfigError::ApiKeyEmpty { .. } => "api-key-empty",
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

/// Reads and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let origin = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()
            .map(|dir| dir.join(path))
            .unwrap_or_else(|_| path.to_owned())
    };
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
    let mut checker = Checker::default();
    let mut env_keys: Vec<(String, String)> = Vec::new();
    let parsed = yaml::parse(text, &BOUNDS).map(|mut value| {
        env_keys = apply_env(&mut value, env);
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
                message: format!("not valid YAML: {}", err.message),
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

/// Layers the `CLAID_HOTFOLDER__*` variables of `env` over `root`; returns (dotted key, var).
fn apply_env(
    root: &mut Value,
    env: impl IntoIterator<Item = (String, String)>,
) -> Vec<(String, String)> {
    let mut applied = Vec::new();
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    for (name, raw) in vars {
        let parts: Vec<String> = name[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if parts.iter().any(String::is_empty) {
            continue;
        }
        let value = yaml::parse(&raw, &BOUNDS).unwrap_or_else(|_| Value::String(raw.clone()));
        if !root.is_object() {
            *root = Value::Object(Default::default());
        }
        let mut node = &mut *root;
        for part in &parts[..parts.len() - 1] {
            let Value::Object(map) = node else { break };
            let child = map
                .entry(part.clone())
                .or_insert_with(|| Value::Object(Default::default()));
            if !child.is_object() {
                *child = Value::Object(Default::default());
            }
            node = child;
        }
        if let (Value::Object(map), Some(last)) = (node, parts.last()) {
            map.insert(last.clone(), value);
        }
        applied.push((parts.join("."), name));
    }
    applied
}

/// Reads the API key: `api_key_file` when set, else `$CLAID_API_KEY`. Never logged.
pub fn load_api_key(api: &ApiConfig) -> Result<Option<String>, ConfigError> {
    if let Some(path) = &api.api_key_file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ApiKeyFile {
            path: path.clone(),
            source,
        })?;
        let key = text.trim();
        if key.is_empty() {
            return Err(ConfigError::ApiKeyEmpty { path: path.clone() });
        }
        return Ok(Some(key.to_owned()));
    }
    Ok(std::env::var(ENV_API_KEY)
        .ok()
        .map(|key| key.trim().to_owned())
        .filter(|key| !key.is_empty()))
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
];

/// The key tree of the config file: `(dotted key, children)`; `*` = any name (profiles).
const SCHEMA: &[(&str, &[&str])] = &[
    ("", TOP_KEYS),
    (
        "api",
        &[
            "base_url",
            "api_key_file",
            "requests_per_second",
            "requests_per_minute",
            "max_in_flight",
            "max_downloads",
            "request_timeout",
            "poll",
        ],
    ),
    ("api.poll", &["min", "max"]),
    (
        "folders",
        &["inbox", "outbox", "archive", "rejected", "state"],
    ),
    ("watch", &["settle", "rescan", "poll_only"]),
    ("admin", &["socket", "metrics_listen"]),
    ("log", &["format"]),
    (
        "limits",
        &["max_manifest_bytes", "max_images", "max_download_bytes"],
    ),
    ("profiles.*", &["operations", "output"]),
];

/// Every dotted key the config knows (for "did you mean" across sections).
fn all_keys() -> Vec<String> {
    let mut keys = Vec::new();
    for (section, children) in SCHEMA {
        for child in *children {
            if section.is_empty() {
                keys.push((*child).to_owned());
            } else {
                keys.push(format!("{section}.{child}"));
            }
        }
    }
    keys
}

#[derive(Default)]
struct Checker {
    problems: Vec<ConfigProblem>,
}

impl Checker {
    fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(ConfigProblem {
            key: key.to_owned(),
            line: None,
            message: message.into(),
        });
    }

    /// Checks that `value` at `section` is a mapping with only known keys; returns it.
    fn section<'v>(
        &mut self,
        root: &'v Value,
        section: &str,
    ) -> Option<&'v serde_json::Map<String, Value>> {
        let value = lookup(root, section)?;
        match value {
            Value::Null => None,
            Value::Object(map) => {
                let schema_key = schema_key(section);
                let known = SCHEMA
                    .iter()
                    .find(|(name, _)| *name == schema_key)
                    .map(|(_, children)| *children)
                    .unwrap_or(&[]);
                for key in map.keys() {
                    if !known.contains(&key.as_str()) {
                        let full = join(section, key);
                        let message = match suggest(&full, known, section) {
                            Some(hint) => format!("unknown key; did you mean `{hint}`?"),
                            None => format!(
                                "unknown key; known keys here: {}",
                                known
                                    .iter()
                                    .map(|k| format!("`{k}`"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        };
                        self.problem(&full, message);
                    }
                }
                Some(map)
            }
            other => {
                self.problem(
                    section,
                    format!("expected a mapping of keys, found {}", kind(other)),
                );
                None
            }
        }
    }

    fn config(&mut self, root: &Value, origin: &Path) -> Option<Config> {
        if !root.is_object() {
            self.problem(
                "",
                format!("the config must be a mapping of keys, found {}", kind(root)),
            );
            return None;
        }
        self.section(root, "");
        for section in [
            "api", "api.poll", "folders", "watch", "admin", "log", "limits",
        ] {
            self.section(root, section);
        }
        let base_dir = origin
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("."));

        let api = self.api(root, &base_dir);
        let folders = self.folders(root, &base_dir);
        let watch = WatchConfig {
            settle: self.duration(root, "watch.settle", DEFAULT_SETTLE, true),
            rescan: self.duration(root, "watch.rescan", DEFAULT_RESCAN, false),
            poll_only: self.boolean(root, "watch.poll_only", false),
        };
        let on_manifest_done = self.choice(root, "on_manifest_done", OnManifestDone::Archive);
        let on_output_exists = self.choice(root, "on_output_exists", OnOutputExists::Replace);
        let in_doubt = self.choice(root, "in_doubt", InDoubtPolicy::Resubmit);
        let admin = AdminConfig {
            socket: self
                .path(root, "admin.socket", &base_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_ADMIN_SOCKET)),
            metrics_listen: self.socket_addr(root, "admin.metrics_listen"),
        };
        let log = LogConfig {
            format: self.choice(root, "log.format", LogFormat::Text),
        };
        let limits = Limits {
            max_manifest_bytes: self.positive_u64(
                root,
                "limits.max_manifest_bytes",
                DEFAULT_MAX_MANIFEST_BYTES,
            ),
            max_images: self.positive_usize(root, "limits.max_images", DEFAULT_MAX_IMAGES),
            max_download_bytes: self.positive_u64(
                root,
                "limits.max_download_bytes",
                DEFAULT_MAX_DOWNLOAD_BYTES,
            ),
        };
        let shutdown_grace = self.duration(root, "shutdown_grace", DEFAULT_SHUTDOWN_GRACE, true);
        let profiles = self.profiles(root);
        Some(Config {
            api: api?,
            folders: folders?,
            watch,
            on_manifest_done,
            on_output_exists,
            in_doubt,
            admin,
            log,
            limits,
            shutdown_grace,
            profiles,
        })
    }

    fn api(&mut self, root: &Value, base_dir: &Path) -> Option<ApiConfig> {
        let base_url = match lookup(root, "api.base_url") {
            None | Some(Value::Null) => BaseUrl::Url(DEFAULT_BASE_URL.to_owned()),
            Some(Value::String(text)) => {
                let text = text.trim();
                if text == "embedded" {
                    BaseUrl::Embedded
                } else if (text.starts_with("http://") || text.starts_with("https://"))
                    && text.len() > "https://".len()
                {
                    BaseUrl::Url(text.trim_end_matches('/').to_owned())
                } else {
                    self.problem(
                        "api.base_url",
                        format!(
                            "`{text}` is not an http(s) URL; use e.g. `{DEFAULT_BASE_URL}`, or `embedded` for the bundled emulator"
                        ),
                    );
                    BaseUrl::Embedded
                }
            }
            Some(other) => {
                self.problem(
                    "api.base_url",
                    format!("expected a URL string, found {}", kind(other)),
                );
                BaseUrl::Embedded
            }
        };
        let poll_min = self.duration(root, "api.poll.min", DEFAULT_POLL_MIN, false);
        let poll_max = self.duration(root, "api.poll.max", DEFAULT_POLL_MAX, false);
        if poll_min > poll_max {
            self.problem(
                "api.poll.min",
                format!(
                    "poll.min ({}) is larger than poll.max ({}); make min ≤ max",
                    humantime::format_duration(poll_min),
                    humantime::format_duration(poll_max)
                ),
            );
        }
        Some(ApiConfig {
            base_url,
            api_key_file: self.path(root, "api.api_key_file", base_dir),
            requests_per_second: nonzero_u32(self.positive_u64(
                root,
                "api.requests_per_second",
                u64::from(DEFAULT_REQUESTS_PER_SECOND),
            )),
            requests_per_minute: nonzero_u32(self.positive_u64(
                root,
                "api.requests_per_minute",
                u64::from(DEFAULT_REQUESTS_PER_MINUTE),
            )),
            max_in_flight: nonzero_usize(self.positive_usize(
                root,
                "api.max_in_flight",
                DEFAULT_MAX_IN_FLIGHT,
            )),
            max_downloads: nonzero_usize(self.positive_usize(
                root,
                "api.max_downloads",
                DEFAULT_MAX_DOWNLOADS,
            )),
            request_timeout: self.duration(
                root,
                "api.request_timeout",
                DEFAULT_REQUEST_TIMEOUT,
                false,
            ),
            poll: PollConfig {
                min: poll_min,
                max: poll_max,
            },
        })
    }

    fn folders(&mut self, root: &Value, base_dir: &Path) -> Option<Folders> {
        let mut get = |name: &str, what: &str| {
            let key = format!("folders.{name}");
            let path = self.path(root, &key, base_dir);
            if path.is_none() && matches!(lookup(root, &key), None | Some(Value::Null)) {
                self.problem(
                    &key,
                    format!("missing; set it to the {what} folder (there is no default)"),
                );
            }
            path
        };
        let inbox = get("inbox", "watched inbox");
        let outbox = get("outbox", "output");
        let archive = get("archive", "finished-manifest archive");
        let rejected = get("rejected", "rejected-manifest");
        let state = get("state", "state store");
        Some(Folders {
            inbox: inbox?,
            outbox: outbox?,
            archive: archive?,
            rejected: rejected?,
            state: state?,
        })
    }

    fn profiles(&mut self, root: &Value) -> BTreeMap<String, Profile> {
        let mut profiles = BTreeMap::new();
        let map = match lookup(root, "profiles") {
            None | Some(Value::Null) => return profiles,
            Some(Value::Object(map)) => map,
            Some(other) => {
                self.problem(
                    "profiles",
                    format!("expected a mapping of profile names, found {}", kind(other)),
                );
                return profiles;
            }
        };
        for (name, value) in map {
            let key = format!("profiles.{name}");
            let Value::Object(fields) = value else {
                self.problem(
                    &key,
                    format!(
                        "expected a mapping with `operations` and/or `output`, found {}",
                        kind(value)
                    ),
                );
                continue;
            };
            for field in fields.keys() {
                if field != "operations" && field != "output" {
                    self.problem(
                        &format!("{key}.{field}"),
                        "unknown key; a profile has only `operations` and `output`",
                    );
                }
            }
            let operations = match fields.get("operations") {
                None | Some(Value::Null) => Value::Object(Default::default()),
                Some(ops @ Value::Object(_)) => ops.clone(),
                Some(other) => {
                    self.problem(
                        &format!("{key}.operations"),
                        format!("expected a mapping of operations, found {}", kind(other)),
                    );
                    continue;
                }
            };
            let output = fields.get("output").filter(|v| !v.is_null()).cloned();
            match &output {
                Some(Value::String(_)) => {
                    self.problem(
                        &format!("{key}.output"),
                        "a destination URI is not supported: results are downloaded into the outbox; give output options like `{ format: webp }`",
                    );
                    continue;
                }
                Some(Value::Object(fields)) if fields.contains_key("destination") => {
                    self.problem(
                        &format!("{key}.output.destination"),
                        "not supported: results are downloaded into the outbox; remove it",
                    );
                    continue;
                }
                _ => {}
            }
            let mut body = serde_json::Map::new();
            body.insert(
                "input".into(),
                Value::String("https://example.invalid/profile-check.jpg".into()),
            );
            body.insert("operations".into(), operations.clone());
            if let Some(output) = &output {
                body.insert("output".into(), output.clone());
            }
            if let Err(errors) = request::validate(&Value::Object(body), InputRule::Required) {
                for error in errors {
                    self.problem(&join(&key, &error.path), error.message);
                }
                continue;
            }
            profiles.insert(name.clone(), Profile { operations, output });
        }
        profiles
    }

    fn duration(&mut self, root: &Value, key: &str, default: Duration, zero_ok: bool) -> Duration {
        const FORM: &str = "use a number with a unit, like `500ms`, `2s`, `5m` or `1h`";
        match lookup(root, key) {
            None | Some(Value::Null) => default,
            Some(Value::String(text)) => match humantime::parse_duration(text.trim()) {
                Ok(duration) if duration.is_zero() && !zero_ok => {
                    self.problem(key, "must be longer than zero");
                    default
                }
                Ok(duration) => duration,
                Err(_) => {
                    self.problem(key, format!("`{text}` is not a duration; {FORM}"));
                    default
                }
            },
            Some(Value::Number(n)) => {
                self.problem(key, format!("`{n}` has no unit; {FORM}"));
                default
            }
            Some(other) => {
                self.problem(
                    key,
                    format!("expected a duration, found {}; {FORM}", kind(other)),
                );
                default
            }
        }
    }

    fn positive_u64(&mut self, root: &Value, key: &str, default: u64) -> u64 {
        match lookup(root, key) {
            None | Some(Value::Null) => default,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(0) => {
                    self.problem(key, "must be at least 1");
                    default
                }
                Some(v) if key.starts_with("api.requests_per") && v > u64::from(u32::MAX) => {
                    self.problem(key, "is too large");
                    default
                }
                Some(v) => v,
                None => {
                    self.problem(key, format!("`{n}` must be a positive whole number"));
                    default
                }
            },
            Some(other) => {
                self.problem(
                    key,
                    format!("expected a positive whole number, found {}", kind(other)),
                );
                default
            }
        }
    }

    fn positive_usize(&mut self, root: &Value, key: &str, default: usize) -> usize {
        let value = self.positive_u64(root, key, default as u64);
        usize::try_from(value).unwrap_or(default)
    }

    fn boolean(&mut self, root: &Value, key: &str, default: bool) -> bool {
        match lookup(root, key) {
            None | Some(Value::Null) => default,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                self.problem(
                    key,
                    format!("expected `true` or `false`, found {}", kind(other)),
                );
                default
            }
        }
    }

    fn choice<T>(&mut self, root: &Value, key: &str, default: T) -> T
    where
        T: serde::de::DeserializeOwned + Serialize + Copy + 'static,
    {
        match lookup(root, key) {
            None | Some(Value::Null) => default,
            Some(value) => match serde_json::from_value::<T>(value.clone()) {
                Ok(v) => v,
                Err(_) => {
                    let options = choices::<T>().join(" | ");
                    self.problem(
                        key,
                        format!("`{}` is not one of: {options}", display(value)),
                    );
                    default
                }
            },
        }
    }

    fn path(&mut self, root: &Value, key: &str, base_dir: &Path) -> Option<PathBuf> {
        match lookup(root, key) {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) if text.trim().is_empty() => {
                self.problem(key, "is empty; give a path or remove the key");
                None
            }
            Some(Value::String(text)) => {
                let path = Path::new(text.trim());
                Some(normalize(&if path.is_absolute() {
                    path.to_owned()
                } else {
                    base_dir.join(path)
                }))
            }
            Some(other) => {
                self.problem(key, format!("expected a path, found {}", kind(other)));
                None
            }
        }
    }

    fn socket_addr(&mut self, root: &Value, key: &str) -> Option<SocketAddr> {
        match lookup(root, key) {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => match text.trim().parse() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    self.problem(
                        key,
                        format!("`{text}` is not an address; use e.g. `127.0.0.1:9464`, or null"),
                    );
                    None
                }
            },
            Some(other) => {
                self.problem(
                    key,
                    format!(
                        "expected an address like `127.0.0.1:9464`, found {}",
                        kind(other)
                    ),
                );
                None
            }
        }
    }
}

/// The accepted spellings of an enum, from its serde names.
fn choices<T: Serialize + 'static>() -> Vec<String> {
    use std::any::TypeId;
    let names: &[&str] = if TypeId::of::<T>() == TypeId::of::<OnManifestDone>() {
        &["archive", "delete", "keep"]
    } else if TypeId::of::<T>() == TypeId::of::<OnOutputExists>() {
        &["replace", "skip", "fail"]
    } else if TypeId::of::<T>() == TypeId::of::<InDoubtPolicy>() {
        &["resubmit", "hold"]
    } else if TypeId::of::<T>() == TypeId::of::<LogFormat>() {
        &["text", "json"]
    } else {
        &[]
    };
    names.iter().map(|s| (*s).to_owned()).collect()
}

fn nonzero_u32(value: u64) -> NonZeroU32 {
    u32::try_from(value)
        .ok()
        .and_then(NonZeroU32::new)
        .unwrap_or(NonZeroU32::MIN)
}

fn nonzero_usize(value: usize) -> NonZeroUsize {
    NonZeroUsize::new(value).unwrap_or(NonZeroUsize::MIN)
}

/// `a.b` + `c` → `a.b.c`; `` + `c` → `c`.
/// Removes `.` and `..` components lexically, so logs and error files show
/// `/srv/target/demo/outbox` rather than `/srv/config/../target/demo/outbox`.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

fn join(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_owned()
    } else {
        format!("{section}.{key}")
    }
}

/// `profiles.white-1000` → `profiles.*`.
fn schema_key(section: &str) -> String {
    match section.strip_prefix("profiles.") {
        Some(_) => "profiles.*".to_owned(),
        None => section.to_owned(),
    }
}

/// Value at a dotted path (sections and keys have no dots, except profile names).
fn lookup<'v>(root: &'v Value, path: &str) -> Option<&'v Value> {
    if path.is_empty() {
        return Some(root);
    }
    let mut value = root;
    for part in path.split('.') {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

fn display(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The closest known key for an unknown one: same section first, then anywhere.
fn suggest(full: &str, known_here: &[&str], section: &str) -> Option<String> {
    let leaf = full.rsplit('.').next().unwrap_or(full);
    if let Some((_, meant)) = SYNONYMS.iter().find(|(typed, _)| *typed == leaf) {
        return Some((*meant).to_owned());
    }
    let mut best: Option<(usize, String)> = None;
    let mut consider = |candidate: String, distance: usize| {
        if best.as_ref().is_none_or(|(d, _)| distance < *d) {
            best = Some((distance, candidate));
        }
    };
    for key in known_here {
        let distance = similarity_distance(leaf, key);
        consider(join(section, key), distance);
    }
    if let Some((distance, candidate)) = &best {
        if *distance <= leaf.len().max(3) / 2 {
            return Some(candidate.clone());
        }
    }
    // A key placed in the wrong section (e.g. `api.settle` → `watch.settle`).
    for key in all_keys() {
        if key.rsplit('.').next() == Some(leaf) && !key.contains('*') {
            return Some(key);
        }
    }
    best.filter(|(distance, _)| *distance <= leaf.len().max(3) / 2)
        .map(|(_, candidate)| candidate)
}

/// Words operators reach for, and the key they mean.
const SYNONYMS: &[(&str, &str)] = &[
    ("rate", "api.requests_per_second"),
    ("rate_limit", "api.requests_per_second"),
    ("rps", "api.requests_per_second"),
    ("rpm", "api.requests_per_minute"),
    ("concurrency", "api.max_in_flight"),
    ("parallelism", "api.max_in_flight"),
    ("api_key", "api.api_key_file"),
    ("key", "api.api_key_file"),
    ("url", "api.base_url"),
    ("endpoint", "api.base_url"),
    ("timeout", "api.request_timeout"),
    ("debounce", "watch.settle"),
    ("interval", "watch.rescan"),
    ("polling", "watch.poll_only"),
    ("grace", "shutdown_grace"),
];

/// Levenshtein distance, with a bonus for a shared prefix (`rate` ~ `requests_per_second`).
fn similarity_distance(a: &str, b: &str) -> usize {
    let lev = yaml::levenshtein(a, b);
    // A known key that starts like the typed one, or contains it, is a likely meaning.
    if b.starts_with(a) || b.contains(a) || a.contains(b) {
        return lev.min(1);
    }
    let a_words: Vec<&str> = a.split('_').collect();
    if b.split('_').any(|word| {
        a_words
            .iter()
            .any(|w| w.len() >= 3 && word.starts_with(&w[..3]))
    }) {
        return lev.min(a.len().max(3) / 2);
    }
    lev
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(
            suggest("api.rate", SCHEMA[1].1, "api").as_deref(),
            Some("api.requests_per_second")
        );
        assert_eq!(
            suggest("api.max_inflight", SCHEMA[1].1, "api").as_deref(),
            Some("api.max_in_flight")
        );
        assert_eq!(
            suggest("api.settle", SCHEMA[1].1, "api").as_deref(),
            Some("watch.settle")
        );
    }
}
