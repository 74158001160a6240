//! The parsed config value checked key by key into a [`Config`]: types, units, ranges,
//! folders resolved against the config's directory, profiles checked with the request schema.
//! Every problem is collected with its dotted key; lines are added by the caller.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::claid::request::{self, InputRule};
use crate::config::schema::{join, known_keys, suggest};
use crate::config::{
    AdminConfig, ApiConfig, BaseUrl, BatchConfig, Config, ConfigProblem, DEFAULT_ADMIN_SOCKET,
    DEFAULT_BASE_URL, DEFAULT_MAX_DOWNLOAD_BYTES, DEFAULT_MAX_DOWNLOADS, DEFAULT_MAX_IMAGES,
    DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_INPUT_BYTES, DEFAULT_MAX_MANIFEST_BYTES,
    DEFAULT_POLL_GIVE_UP_AFTER, DEFAULT_POLL_MAX, DEFAULT_POLL_MIN, DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_REQUESTS_PER_MINUTE, DEFAULT_REQUESTS_PER_SECOND, DEFAULT_RESCAN, DEFAULT_SETTLE,
    DEFAULT_SHUTDOWN_GRACE, DEFAULT_STORAGE_REGION, DEFAULT_UNREACHABLE_TIMEOUT,
    DEFAULT_UPLOAD_TIMEOUT, Folders, InDoubtPolicy, Limits, LogConfig, LogFormat, OnManifestDone,
    OnOutputExists, PollConfig, Profile, StorageEntry, WatchConfig,
};
use crate::objects::Provider;
use crate::yaml::kind;

mod web;

/// The longest path a Unix socket's address holds (`sun_path` is 108 bytes, with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The longest `api.batch.linger` (see `Checker::linger`).
const MAX_LINGER: Duration = Duration::from_secs(10);

/// Turns the parsed value into a [`Config`], collecting every problem on the way.
#[derive(Default)]
pub struct Checker {
    pub problems: Vec<ConfigProblem>,
}

impl Checker {
    pub fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(ConfigProblem {
            key: key.to_owned(),
            line: None,
            message: crate::text::unsafe_escaped(message.into()),
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
                let known = known_keys(section);
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

    /// The config `root` describes (`origin` is its file: relative folders resolve against
    /// its directory), or `None` when a required part is missing or wrong.
    pub fn config(&mut self, root: &Value, origin: &Path) -> Option<Config> {
        if !root.is_object() {
            self.problem(
                "",
                format!("the config must be a mapping of keys, found {}", kind(root)),
            );
            return None;
        }
        self.section(root, "");
        for section in [
            "api",
            "api.poll",
            "api.batch",
            "folders",
            "watch",
            "admin",
            "log",
            "limits",
            "webhook",
            "web",
        ] {
            self.section(root, section);
        }
        let base_dir = origin
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("."));

        let mut api = self.api(root, &base_dir);
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
        // The daemon can bind a longer path (it binds a short name, then renames it), but no
        // client can connect to it: `status`, `jobs` and `replay` never reached the daemon.
        let socket_len = admin.socket.as_os_str().len();
        if socket_len > MAX_SOCKET_PATH {
            self.problem(
                "admin.socket",
                format!(
                    "the path is {socket_len} bytes long, and a Unix socket's address holds at most {MAX_SOCKET_PATH}: no client (`status`, `curl --unix-socket`) could connect to it; choose a shorter path, such as /run/claid-hotfolder/admin.sock"
                ),
            );
        }
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
            max_input_bytes: self.positive_u64(
                root,
                "limits.max_input_bytes",
                DEFAULT_MAX_INPUT_BYTES,
            ),
        };
        let shutdown_grace = self.duration(root, "shutdown_grace", DEFAULT_SHUTDOWN_GRACE, true);
        let mut storages = self.storages(root, &base_dir);
        if let Some(api) = &mut api {
            api.staging = self.staging(root, &storages);
            if let Some(entry) = api.staging.as_ref().and_then(|name| storages.get_mut(name)) {
                entry.staging = true;
            }
        }
        let profiles = self.profiles(root, &storages);
        let webhook = self.webhook(root, &base_dir);
        let web = self.web(root, &base_dir);
        let alerts = self.alerts(root, &base_dir);
        // Two listeners on one address: the second could not bind at start. (Port 0 gives
        // each listener a free port of its own.)
        let listeners = [
            ("admin.metrics_listen", admin.metrics_listen),
            ("webhook.listen", webhook.as_ref().map(|w| w.listen)),
            ("web.listen", web.as_ref().map(|w| w.listen)),
        ];
        for (i, (key, addr)) in listeners.iter().enumerate() {
            let Some(addr) = addr.filter(|addr| addr.port() != 0) else {
                continue;
            };
            if let Some((other, _)) = listeners[..i].iter().find(|(_, earlier)| {
                earlier.is_some_and(|e| {
                    e.port() == addr.port()
                        && (e.ip() == addr.ip()
                            || e.ip().is_unspecified()
                            || addr.ip().is_unspecified())
                })
            }) {
                self.problem(
                    key,
                    format!("`{addr}` is also `{other}`: two listeners cannot share an address; give each its own port"),
                );
            }
        }
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
            webhook,
            web,
            alerts,
            storages,
        })
    }

    /// `storages.NAME`: the Claid connector name, the bucket URL, the endpoint, region and
    /// credentials file. The credentials themselves are read only when the storage is opened.
    fn storages(&mut self, root: &Value, base_dir: &Path) -> BTreeMap<String, StorageEntry> {
        let mut storages = BTreeMap::new();
        let map = match lookup(root, "storages") {
            None | Some(Value::Null) => return storages,
            Some(Value::Object(map)) => map,
            Some(other) => {
                self.problem(
                    "storages",
                    format!(
                        "expected a mapping of storage names, like `catalog: {{ claid_name: catalog-s3, url: s3://bucket/prefix }}`, found {}",
                        kind(other)
                    ),
                );
                return storages;
            }
        };
        for (name, value) in map {
            let key = format!("storages.{name}");
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                self.problem(
                    &key,
                    "a storage name may hold only letters, digits, `-` and `_` (it is the NAME of storage://NAME/…)",
                );
                continue;
            }
            if !matches!(value, Value::Object(_)) {
                self.problem(
                    &key,
                    format!(
                        "expected a mapping with `claid_name` and `url`, found {}",
                        kind(value)
                    ),
                );
                continue;
            }
            self.section(root, &key);
            let n_problems = self.problems.len();
            let claid_name = match lookup(root, &format!("{key}.claid_name")) {
                None | Some(Value::Null) => {
                    self.problem(
                        &format!("{key}.claid_name"),
                        "missing; give the name of the storage connector in Claid's dashboard (GET /v1/storage/storages lists them)",
                    );
                    String::new()
                }
                Some(Value::String(text)) => {
                    let text = text.trim();
                    if let Err(reason) = check_connector_name(text) {
                        self.problem(
                            &format!("{key}.claid_name"),
                            format!("`{text}`: a connector name {reason}"),
                        );
                    }
                    text.to_owned()
                }
                Some(other) => {
                    self.problem(
                        &format!("{key}.claid_name"),
                        format!("expected the connector's name, found {}", kind(other)),
                    );
                    String::new()
                }
            };
            let none = || (Provider::S3, String::new(), String::new());
            let (provider, bucket, prefix) = match lookup(root, &format!("{key}.url")) {
                None | Some(Value::Null) => {
                    self.problem(
                        &format!("{key}.url"),
                        "missing; give the bucket and prefix the connector points at, like `s3://bucket/prefix` or `gs://bucket/prefix`",
                    );
                    none()
                }
                Some(Value::String(text)) => match crate::objects::S3Url::parse(text.trim()) {
                    Ok(url) => (url.provider, url.bucket, url.prefix),
                    Err(err) => {
                        self.problem(&format!("{key}.url"), err.to_string());
                        none()
                    }
                },
                Some(other) => {
                    self.problem(
                        &format!("{key}.url"),
                        format!(
                            "expected a URL like `s3://bucket/prefix`, found {}",
                            kind(other)
                        ),
                    );
                    none()
                }
            };
            // A gs:// bucket is reached through Google's API with a service account's key:
            // an S3 endpoint or signing region set beside it would be silently unused.
            if provider == Provider::Gcs {
                for field in ["endpoint", "region"] {
                    if !matches!(
                        lookup(root, &format!("{key}.{field}")),
                        None | Some(Value::Null)
                    ) {
                        self.problem(
                            &format!("{key}.{field}"),
                            format!("applies to s3:// storages only; a gs:// storage is reached through Google's own API (remove `{field}`)"),
                        );
                    }
                }
            }
            let endpoint = match lookup(root, &format!("{key}.endpoint")) {
                None | Some(Value::Null) => None,
                Some(Value::String(text)) if crate::text::has_user_info(text.trim()) => {
                    // Never echoed: the part before `@` is a secret.
                    self.problem(
                        &format!("{key}.endpoint"),
                        "holds credentials (`user:password@`): S3 requests are signed with the keys of `credentials_file`, never with credentials in the URL; remove them from the endpoint".to_owned(),
                    );
                    None
                }
                Some(Value::String(text))
                    if (text.trim().starts_with("http://")
                        || text.trim().starts_with("https://"))
                        && text.trim().len() > "https://".len() =>
                {
                    if let Some(why) = url_problem(text.trim()) {
                        self.problem(
                            &format!("{key}.endpoint"),
                            format!(
                                "`{}` {why}; give the S3-compatible server like `http://127.0.0.1:9000`, or remove the key for Amazon S3",
                                // The user information is a secret: never echoed.
                                crate::text::redact_credentials(text.trim())
                            ),
                        );
                    } else if let Some(server) = endpoint_with_more(text.trim()) {
                        // A path took the bucket's place in every request; a query is never
                        // echoed (it may hold a token).
                        self.problem(
                            &format!("{key}.endpoint"),
                            format!(
                                "has a path, a query or a fragment after the server `{server}`: give the server alone (like `http://127.0.0.1:9000`); the bucket and prefix go in `url`"
                            ),
                        );
                    }
                    Some(text.trim().trim_end_matches('/').to_owned())
                }
                Some(other) => {
                    self.problem(
                        &format!("{key}.endpoint"),
                        format!(
                            "`{}` is not an http(s) URL; give the S3-compatible server like `http://127.0.0.1:9000`, or remove the key for Amazon S3",
                            display(other)
                        ),
                    );
                    None
                }
            };
            let region = match lookup(root, &format!("{key}.region")) {
                None | Some(Value::Null) => DEFAULT_STORAGE_REGION.to_owned(),
                // A region is signed into every request: letters, digits, `-`, `_`, `.`
                // (`us east 1` passed, and was refused only by a server that checks it).
                Some(Value::String(text))
                    if !text.trim().is_empty()
                        && text
                            .trim()
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
                {
                    text.trim().to_owned()
                }
                Some(other) => {
                    self.problem(
                        &format!("{key}.region"),
                        format!(
                            "expected a region like `{DEFAULT_STORAGE_REGION}`, found `{}`",
                            display(other)
                        ),
                    );
                    DEFAULT_STORAGE_REGION.to_owned()
                }
            };
            // Amazon S3 and Google Cloud Storage refuse more names than the servers one sets
            // `endpoint` for; told here rather than as a failed listing at the start.
            let no_endpoint = matches!(
                lookup(root, &format!("{key}.endpoint")),
                None | Some(Value::Null)
            );
            if no_endpoint && !bucket.is_empty() {
                if let Err(why) = crate::objects::check_provider_bucket(provider, &bucket) {
                    self.problem(
                        &format!("{key}.url"),
                        format!("bucket name `{bucket}` {why}"),
                    );
                }
            }
            let credentials_file = self.path(root, &format!("{key}.credentials_file"), base_dir);
            let output_local_copy = self.boolean(root, &format!("{key}.output_local_copy"), false);
            if self.problems.len() == n_problems {
                storages.insert(
                    name.clone(),
                    StorageEntry {
                        claid_name,
                        provider,
                        bucket,
                        prefix,
                        endpoint,
                        region,
                        credentials_file,
                        output_local_copy,
                        staging: false,
                    },
                );
            }
        }
        let mut by_connector: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, entry) in &storages {
            if let Some(other) = by_connector.insert(&entry.claid_name, name) {
                self.problem(
                    &format!("storages.{name}.claid_name"),
                    format!(
                        "`{}` is also the connector of `storages.{other}`; give each connector one entry",
                        entry.claid_name
                    ),
                );
            }
        }
        // A row's `storage://NAME/…` names a storage, or else a connector: a storage named
        // like another storage's connector would send such rows to the other's bucket.
        for (name, entry) in &storages {
            if let Some((other, _)) = storages
                .iter()
                .find(|(other, e)| *other != name && e.claid_name == *name)
            {
                self.problem(
                    &format!("storages.{name}"),
                    format!(
                        "the storage's name `{name}` is the connector (`claid_name`) of `storages.{other}`, so `storage://{name}/…` could mean either bucket; rename the storage (its connector `{}` stays)",
                        entry.claid_name
                    ),
                );
            }
        }
        storages
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
                    if let Some(why) = url_problem(text) {
                        // The user information is a secret: never echoed.
                        let shown = crate::text::redact_credentials(text);
                        self.problem(
                            "api.base_url",
                            format!(
                                "`{shown}` {why}; use e.g. `{DEFAULT_BASE_URL}`, or `embedded` for the bundled emulator"
                            ),
                        );
                    }
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
        // Read once: a bad value is one problem, not two.
        let give_up_after = self.duration(
            root,
            "api.poll.give_up_after",
            DEFAULT_POLL_GIVE_UP_AFTER,
            false,
        );
        if lookup(root, "api.poll.give_up_after").is_some()
            && !give_up_after.is_zero()
            && give_up_after < poll_max
        {
            self.problem(
                "api.poll.give_up_after",
                format!(
                    "is shorter than api.poll.max ({}): a task would be given up (after being billed) before it is polled twice; Claid's tasks take seconds and batches minutes, so keep the default 2h unless a task may take longer",
                    humantime::format_duration(poll_max)
                ),
            );
        }
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
        let request_timeout =
            self.duration(root, "api.request_timeout", DEFAULT_REQUEST_TIMEOUT, false);
        // An upload waits at least as long as any request: the value in force is printed.
        let upload_timeout = self
            .duration(root, "api.upload_timeout", DEFAULT_UPLOAD_TIMEOUT, false)
            .max(request_timeout);
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
            request_timeout,
            upload_timeout,
            poll: PollConfig {
                min: poll_min,
                max: poll_max,
                give_up_after,
            },
            unreachable_timeout: self.duration(
                root,
                "api.unreachable_timeout",
                DEFAULT_UNREACHABLE_TIMEOUT,
                false,
            ),
            batch: BatchConfig {
                max_images: self.positive_usize(
                    root,
                    "api.batch.max_images",
                    BatchConfig::default().max_images,
                ),
                linger: self.linger(root),
            },
            staging: None,
            staging_delete: self.boolean(root, "api.staging_delete", true),
        })
    }

    /// `api.staging`: the name of a storage of `storages`.
    fn staging(
        &mut self,
        root: &Value,
        storages: &BTreeMap<String, StorageEntry>,
    ) -> Option<String> {
        let key = "api.staging";
        match lookup(root, key) {
            None | Some(Value::Null) => None,
            Some(Value::String(name)) if storages.contains_key(name.trim()) => {
                Some(name.trim().to_owned())
            }
            // The entry is there but has problems of its own (already reported).
            Some(Value::String(name))
                if lookup(root, &format!("storages.{}", name.trim())).is_some() =>
            {
                None
            }
            Some(other) => {
                let known: Vec<String> = storages.keys().map(|k| format!("`{k}`")).collect();
                self.problem(
                    key,
                    format!(
                        "`{}` is not a storage of `storages`; {}",
                        display(other),
                        if known.is_empty() {
                            "add one (docs/storage.md) or remove the key".to_owned()
                        } else {
                            format!("use one of {}", known.join(", "))
                        }
                    ),
                );
                None
            }
        }
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
        let create = self.boolean(root, "folders.create", false);
        if let Some(inbox) = &inbox {
            let others = [&outbox, &archive, &rejected, &state].map(Option::as_deref);
            for (key, message) in folder_overlaps(inbox, others) {
                self.problem(key, message);
            }
        }
        Some(Folders {
            inbox: inbox?,
            outbox: outbox?,
            archive: archive?,
            rejected: rejected?,
            state: state?,
            create,
        })
    }

    fn profiles(
        &mut self,
        root: &Value,
        storages: &BTreeMap<String, StorageEntry>,
    ) -> BTreeMap<String, Profile> {
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
                        "a destination URI alone is not supported; give output options like `{ format: webp }`, or `{ destination: storage://NAME/folder/ }` with NAME a configured storage",
                    );
                    continue;
                }
                Some(Value::Object(fields)) if fields.contains_key("destination") => {
                    let named = fields
                        .get("destination")
                        .and_then(Value::as_str)
                        .and_then(|uri| uri.strip_prefix("storage://"))
                        .map(|rest| rest.split_once('/').map_or(rest, |(name, _)| name))
                        .filter(|name| {
                            storages.contains_key(*name)
                                || storages.values().any(|e| e.claid_name == *name)
                        });
                    if named.is_none() {
                        self.problem(
                            &format!("{key}.output.destination"),
                            "results go to the outbox unless the destination is `storage://NAME/folder/` with NAME a storage of `storages`; remove it or configure the storage",
                        );
                        continue;
                    }
                    // Held to what a manifest's own destination is (a folder, ending in `/`;
                    // no space): one without its `/` passed, and every manifest using the
                    // profile was refused, naming a key it does not hold.
                    if let Some(why) = output
                        .as_ref()
                        .and_then(|output| crate::manifest::destination_problem(output, storages))
                    {
                        self.problem(&format!("{key}.output.destination"), why);
                        continue;
                    }
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

    /// `api.batch.linger`, at most [`MAX_LINGER`]: each batch of a drop's last images waits
    /// it out, so `run --once` took a minute longer with `linger: 60s`, and `30d` passed
    /// (acceptance run).
    fn linger(&mut self, root: &Value) -> Duration {
        const KEY: &str = "api.batch.linger";
        let linger = self.duration(root, KEY, BatchConfig::default().linger, true);
        if linger > MAX_LINGER {
            self.problem(
                KEY,
                format!(
                    "`{}` is too long; at most `{}`: a batch waits this long for more images once none is queued, and a drop's last batch waits all of it",
                    humantime::format_duration(linger),
                    humantime::format_duration(MAX_LINGER)
                ),
            );
            return BatchConfig::default().linger;
        }
        linger
    }

    fn duration(&mut self, root: &Value, key: &str, default: Duration, zero_ok: bool) -> Duration {
        const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);
        const FORM: &str = "use a number with a unit, like `500ms`, `2s`, `5m` or `1h`";
        match lookup(root, key) {
            None | Some(Value::Null) => default,
            Some(Value::String(text)) => match humantime::parse_duration(text.trim()) {
                Ok(duration) if duration.is_zero() && !zero_ok => {
                    self.problem(key, "must be longer than zero");
                    default
                }
                // Nothing the daemon waits for is meant to outlast a month; a typo of a few
                // digits would otherwise be a wait nobody sees end.
                Ok(duration) if duration > MAX_DURATION => {
                    self.problem(
                        key,
                        format!("`{}` is too long; at most `30days`", text.trim()),
                    );
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
        // Each listener's own usual address in the hint (its default, or the docs' example).
        let example = match key {
            "web.listen" => "127.0.0.1:8788",
            "webhook.listen" => "127.0.0.1:8787",
            _ => "127.0.0.1:9464",
        };
        let off = if key == "admin.metrics_listen" {
            ", or null to serve none"
        } else {
            ""
        };
        match lookup(root, key) {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => match text.trim().parse() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    // Say which part is wrong: a port past 65535 is not a host name problem.
                    let port = text.trim().rsplit_once(':').map(|(_, port)| port);
                    let why = match port {
                        Some(port)
                            if !port.is_empty()
                                && port.bytes().all(|b| b.is_ascii_digit())
                                && port.parse::<u16>().is_err() =>
                        {
                            format!("its port `{port}` is past 65535")
                        }
                        None => "it has no port".to_owned(),
                        _ => "a host name such as `localhost` is not taken".to_owned(),
                    };
                    self.problem(
                        key,
                        format!(
                            "`{}` is not an IP address and port ({why}); use e.g. `{example}`{off}",
                            crate::text::Escaped::str(text)
                        ),
                    );
                    None
                }
            },
            Some(other) => {
                self.problem(
                    key,
                    format!(
                        "expected an address like `{example}`, found {}",
                        kind(other)
                    ),
                );
                None
            }
        }
    }
}

/// Claid's rule for a connector name (`StorageIn.name`); the error completes "a connector
/// name …".
pub fn check_connector_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if name.chars().count() > 50 {
        return Err("must be at most 50 characters");
    }
    if name
        .chars()
        .any(|c| c == '/' || c.is_whitespace() || c.is_control())
    {
        return Err("may not hold `/`, whitespace or control characters");
    }
    Ok(())
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

/// What makes an `http(s)://…` text no usable URL (one that does not parse: a port past
/// 65535, an unclosed IPv6 bracket; or one without a host), in words that follow the URL.
fn url_problem(text: &str) -> Option<String> {
    // The URL parser takes a space in a path as `%20`: a typo (`/v 1`) became another path.
    if text.chars().any(char::is_whitespace) {
        return Some("holds a space (a URL has none; write `%20` where one is meant)".to_owned());
    }
    match reqwest::Url::parse(text) {
        Err(err) => Some(format!("is not a valid URL ({err})")),
        Ok(url) if url.host_str().is_none_or(str::is_empty) => Some("names no host".to_owned()),
        Ok(_) => None,
    }
}

/// An endpoint URL with more than its server (a path other than `/`, a query, a fragment):
/// its server (`scheme://host[:port]`), to name it.
fn endpoint_with_more(text: &str) -> Option<String> {
    let url = reqwest::Url::parse(text).ok()?;
    let more = !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some();
    more.then(|| {
        let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
        format!("{}://{}{port}", url.scheme(), url.host_str().unwrap_or(""))
    })
}

/// Which of the outbox, archive, rejected and state folders (in that order; `None`: not
/// configured) may not be where they are beside `inbox`, each with its key and why (see
/// [`overlap`]): checked with the config, and again at the start once every folder exists.
pub fn folder_overlaps(inbox: &Path, others: [Option<&Path>; 4]) -> Vec<(&'static str, String)> {
    let keys = [
        ("folders.outbox", "outbox"),
        ("folders.archive", "archive"),
        ("folders.rejected", "rejected"),
        ("folders.state", "state"),
    ];
    let mut problems: Vec<(&'static str, String)> = keys
        .into_iter()
        .zip(others)
        .filter_map(|((key, name), path)| Some((key, overlap(inbox, path?, name)?)))
        .collect();
    // And each apart from the others: a rejected manifest (or an archived one) written where
    // outputs go replaces an output of the same name, or is replaced by one.
    for (i, (key, _)) in keys.iter().enumerate() {
        for (j, (other_key, _)) in keys.iter().enumerate().skip(i + 1) {
            let (Some(a), Some(b)) = (others[i], others[j]) else {
                continue;
            };
            if problems.iter().any(|(k, _)| k == other_key) {
                continue;
            }
            let (la, lb) = (lexical(a), lexical(b));
            let (ca, cb) = match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
                (Ok(ca), Ok(cb)) => (ca, cb),
                _ => (la.clone(), lb.clone()),
            };
            let why = if la == lb || ca == cb {
                format!(
                    "is the same folder as `{key}`; give each of outbox, archive, rejected and state a folder of its own"
                )
            } else if la.starts_with(&lb)
                || ca.starts_with(&cb)
                || lb.starts_with(&la)
                || cb.starts_with(&ca)
            {
                format!(
                    "is inside `{key}` or holds it; keep outbox, archive, rejected and state apart (for example side by side under one parent)"
                )
            } else {
                continue;
            };
            problems.push((other_key, why));
        }
    }
    problems
}

/// Why `folder` (`folders.NAME`) may not be where it is: the inbox itself, inside it (the
/// daemon would read what it writes there as new drops: an archived manifest runs and is
/// billed again, over and over), or holding the inbox. Compared as written (`.` and `..`
/// resolved) and, when both exist, as the filesystem resolves them (symlinks).
fn overlap(inbox: &Path, folder: &Path, name: &str) -> Option<String> {
    let pairs = [
        (lexical(inbox), lexical(folder)),
        match (std::fs::canonicalize(inbox), std::fs::canonicalize(folder)) {
            (Ok(a), Ok(b)) => (a, b),
            _ => (lexical(inbox), lexical(folder)),
        },
    ];
    let what = match name {
        "outbox" => "outputs and reports",
        "archive" => "archived manifests",
        "rejected" => "rejected manifests and their error files",
        _ => "the job store",
    };
    // Compared as written (and with links resolved) first: a folder plainly inside the inbox
    // is told so, not blamed on a bind mount.
    for (inbox, folder) in pairs {
        if folder == inbox {
            return Some(format!(
                "is the inbox: the daemon would take {what} written there for new drops (an archived manifest runs and is billed again, over and over); use a folder outside `folders.inbox`"
            ));
        }
        if folder.starts_with(&inbox) {
            return Some(format!(
                "is inside the inbox ({}): the daemon would take {what} written there for new drops; use a folder outside `folders.inbox`",
                inbox.display()
            ));
        }
        if inbox.starts_with(&folder) && name != "state" {
            return Some(format!(
                "holds the inbox ({}): keep the inbox and this folder apart (for example side by side under one parent)",
                inbox.display()
            ));
        }
    }
    // The same folder may be reached by paths no comparison of names relates: a bind mount
    // of the inbox, one network share mounted twice. Compared by (device, inode) too.
    if let Some(inbox_id) = identity(inbox) {
        let upward = identities_upward(folder);
        if identity(folder) == Some(inbox_id) {
            return Some(format!(
                "is the inbox, reached another way (a bind mount, or one share mounted twice): the daemon would take {what} written there for new drops (an archived manifest runs and is billed again, over and over); use a folder outside `folders.inbox`"
            ));
        }
        if upward.contains(&inbox_id) {
            return Some(format!(
                "is inside the inbox ({}), reached another way (a bind mount, or one share mounted twice): the daemon would take {what} written there for new drops; use a folder outside `folders.inbox`",
                inbox.display()
            ));
        }
        if name != "state"
            && let Some(folder_id) = identity(folder)
            && identities_upward(inbox).contains(&folder_id)
        {
            return Some(format!(
                "holds the inbox ({}), reached another way (a bind mount, or one share mounted twice): keep the inbox and this folder apart",
                inbox.display()
            ));
        }
    }
    None
}

/// The (device, inode) of an existing folder (also how the daemon tells its store's folder
/// from one made again at its path).
pub(crate) fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The (device, inode) of `path` (when it exists) and of each existing folder above it, from
/// `path` up (`.` and `..` resolved as written; the folders themselves through any symlink).
fn identities_upward(path: &Path) -> Vec<(u64, u64)> {
    let mut at = lexical(path);
    let mut out = Vec::new();
    loop {
        if let Some(id) = identity(&at) {
            out.push(id);
        }
        if !at.pop() {
            return out;
        }
    }
}

/// `path` with `.` and `..` resolved without the filesystem.
fn lexical(path: &Path) -> std::path::PathBuf {
    let mut out = std::path::PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}
