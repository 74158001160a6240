//! Object storage access (Amazon S3 and S3-compatible servers) through the `object_store` crate.
//!
//! One [`ObjectStorage`] is one bucket and one key prefix in it (`s3://bucket/prefix`); every
//! operation (get, put, head, list, delete) takes a key *relative to that prefix*, and the key is
//! checked before any request is made ([`check_key`]), so no key can leave the prefix: empty,
//! `.` and `..` segments, a leading `/` and control characters are refused.
//!
//! Used by the emulator (its storage connectors read inputs from and write outputs to a real
//! S3-protocol server) and by the daemon (its `storages`).
//!
//! Credentials are always explicit ([`Credentials`]: given, read from a YAML file, or from the
//! standard `AWS_*` environment variables): the instance-metadata lookups `object_store` would
//! otherwise fall back to are never made. Errors ([`ObjectError`]) name the operation, the
//! object's `s3://` URI and the cause, and carry a stable kebab-case [`ObjectError::code`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::path::Path as StorePath;
use object_store::{
    BackoffConfig, ClientOptions, MultipartUpload, ObjectStore, PutPayload, RetryConfig,
};

use crate::text::escape;

/// Longest key S3 accepts (bytes, prefix included).
pub const MAX_KEY_BYTES: usize = 1024;
/// How long one request may take, body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The size of each part but the last of an object written in parts (S3's least is 5 MiB).
pub const PART_SIZE: usize = 5 * 1024 * 1024;
/// Objects larger than this are written in parts ([`ObjectStorage::put_in_parts`]).
pub const PARTS_OVER: usize = PART_SIZE;
/// How long the listing that checks a storage (`validate`, the start) may take: a listing
/// of one page answers in well under a second; a server that took the connection and says
/// nothing is told in this time, not in a whole [`REQUEST_TIMEOUT`] and its retries.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often `object_store` retries a request that failed with a 5xx or a transport error.
pub const MAX_RETRIES: usize = 3;
/// Longest time spent retrying one request.
pub const RETRY_TIMEOUT: Duration = Duration::from_secs(20);

/// Access keys of an S3 account. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Temporary credentials also carry a session token.
    #[serde(default)]
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Credentials {
    /// Static keys.
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        Credentials {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token: None,
        }
    }

    /// Tells the log's filter the secret parts ([`crate::text::register_secret`]).
    fn register(&self) {
        crate::text::register_secret(&self.secret_access_key);
        if let Some(token) = &self.session_token {
            crate::text::register_secret(token);
        }
    }

    /// The standard environment variables `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`
    /// (and `AWS_SESSION_TOKEN` when set).
    pub fn from_env() -> Result<Credentials, ObjectError> {
        Credentials::from_vars(|name| std::env::var(name).ok())
    }

    /// [`Credentials::from_env`] over any source of variables.
    fn from_vars(read: impl Fn(&str) -> Option<String>) -> Result<Credentials, ObjectError> {
        let var = |name: &str| read(name).filter(|v| !v.is_empty());
        match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            (Some(access_key_id), Some(secret_access_key)) => {
                let credentials = Credentials {
                    access_key_id,
                    secret_access_key,
                    session_token: var("AWS_SESSION_TOKEN"),
                };
                credentials.register();
                Ok(credentials)
            }
            (key, secret) => Err(ObjectError::NoCredentials {
                missing: match (key, secret) {
                    (Some(_), None) => "AWS_SECRET_ACCESS_KEY is not set (AWS_ACCESS_KEY_ID is)",
                    (None, Some(_)) => "AWS_ACCESS_KEY_ID is not set (AWS_SECRET_ACCESS_KEY is)",
                    _ => "neither AWS_ACCESS_KEY_ID nor AWS_SECRET_ACCESS_KEY is set",
                },
            }),
        }
    }

    /// A YAML file `{access_key_id: …, secret_access_key: …}` (and optionally `session_token`).
    pub fn from_file(path: &Path) -> Result<Credentials, ObjectError> {
        let fail = |cause: String| ObjectError::CredentialsFile {
            path: path.to_path_buf(),
            cause,
        };
        let text = read_small(path).map_err(|cause| {
            fail(if cause.starts_with("more than") {
                format!("{cause} (a YAML map of access_key_id and secret_access_key)")
            } else {
                cause
            })
        })?;
        // Saved by an editor that writes a byte-order mark: the mark is no part of the map.
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        // The AWS CLI's own files (`~/.aws/credentials`) are INI: `[profile]` and
        // `aws_access_key_id = …` lines. Told so, since YAML reads them as something else.
        if text.lines().any(|line| {
            let line = line.trim();
            line.starts_with('[') && line.ends_with(']')
                || line.starts_with("aws_access_key_id")
                || line.starts_with("aws_secret_access_key")
        }) {
            return Err(fail(
                "it looks like the AWS CLI's own credentials file (`[profile]` and `aws_access_key_id = …` lines); write a YAML map instead: `access_key_id: …` and `secret_access_key: …` on two lines".to_owned(),
            ));
        }
        // A shell environment file (`AWS_ACCESS_KEY_ID=…` lines) reads as one string in YAML.
        // (Lines at the first column only: an indented line continues a YAML value.)
        if text.lines().any(|line| {
            let line = line.trim_end().trim_start_matches("export ");
            line.split_once('=').is_some_and(|(name, _)| {
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            })
        }) {
            return Err(fail(
                "it looks like a shell environment file (`AWS_ACCESS_KEY_ID=…` lines); write a YAML map instead: `access_key_id: …` and `secret_access_key: …` on two lines (or leave credentials_file out and set the AWS environment variables)".to_owned(),
            ));
        }
        // Told by their line, never by what they hold (the secret may be there).
        if let Some(line) = text.lines().position(|line| {
            line.chars()
                .any(|c| c.is_control() && c != '\t' && c != '\r')
        }) {
            return Err(fail(format!(
                "line {}: a control character; remove it (it often comes from a copy and paste)",
                line + 1
            )));
        }
        let mut keys_seen = std::collections::HashSet::new();
        if let Some((line, key)) = text.lines().enumerate().find_map(|(at, line)| {
            let key = line.split_once(':')?.0.trim();
            (!line.starts_with([' ', '\t', '#'])
                && ["access_key_id", "secret_access_key", "session_token"].contains(&key)
                && !keys_seen.insert(key.to_owned()))
            .then(|| (at + 1, key.to_owned()))
        }) {
            return Err(fail(format!(
                "line {line}: `{key}` is given a second time; keep one"
            )));
        }
        let credentials: Credentials = serde_yaml::from_str(text).map_err(|err| {
            let message = err.to_string();
            // Where the parser stopped, within the file (it names the line after the last at
            // the end of the text, and no line for a second document).
            let lines = text.lines().count().max(1);
            let line = match err.location() {
                Some(at) => format!("line {}", at.line().clamp(1, lines)),
                None if message.contains("more than one document") => {
                    "a second document (`---`)".to_owned()
                }
                None => "the file".to_owned(),
            };
            // Messages quote what they found (a value, an unknown key), which may be the
            // secret: say where and what was expected, never what is there. Only a missing
            // key's message (it names ours) is passed on.
            if message.contains("invalid type") || message.contains("invalid value") {
                fail(format!("{line}: both keys take a string value"))
            } else if message.starts_with("missing field") {
                fail(format!(
                    "{message} (expected access_key_id and secret_access_key)"
                ))
            } else if message.contains("unknown field") {
                fail(format!(
                    "{line}: a key other than access_key_id, secret_access_key and session_token"
                ))
            } else {
                fail(format!(
                    "{line}: not one YAML map of access_key_id and secret_access_key"
                ))
            }
        })?;
        // `~` and `null` are YAML's empty value (read as the text itself into a string: the
        // requests were signed `Credential=~/…`, and the bucket refused them as bad keys).
        let empty = |value: &str| {
            let value = value.trim();
            value.is_empty() || matches!(value, "~" | "null" | "Null" | "NULL")
        };
        if empty(&credentials.access_key_id) || empty(&credentials.secret_access_key) {
            return Err(fail(
                "access_key_id and secret_access_key must not be empty (nor `~` or `null`, YAML's empty value)".to_owned(),
            ));
        }
        credentials.register();
        Ok(credentials)
    }
}

/// Which kind of bucket a storage is: Amazon S3 (or an S3-compatible server) or Google Cloud
/// Storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Provider {
    #[default]
    S3,
    Gcs,
}

impl Provider {
    /// The URL scheme: `s3` or `gs`.
    pub fn scheme(self) -> &'static str {
        match self {
            Provider::S3 => "s3",
            Provider::Gcs => "gs",
        }
    }

    /// The connector type Claid gives such a bucket (`s3`, `gcs`).
    pub fn claid_type(self) -> &'static str {
        match self {
            Provider::S3 => "s3",
            Provider::Gcs => "gcs",
        }
    }
}

/// A Google service account's JSON key (as the Cloud console downloads it). `Debug` never shows
/// it.
#[derive(Clone, PartialEq, Eq)]
pub struct GcsKey {
    /// The file's text, handed to the GCS client as it is.
    json: String,
    /// The account's `client_email` (not a secret: shown where an S3 storage shows its key id).
    pub client_email: String,
    /// The key names an `http://` API base (`gcs_base_url`, for a local test server).
    plain_http: bool,
}

impl std::fmt::Debug for GcsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcsKey")
            .field("client_email", &self.client_email)
            .finish_non_exhaustive()
    }
}

impl GcsKey {
    /// The file `GOOGLE_APPLICATION_CREDENTIALS` names.
    pub fn from_env() -> Result<GcsKey, ObjectError> {
        match std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS").filter(|v| !v.is_empty()) {
            Some(path) => GcsKey::from_file(Path::new(&path)),
            None => Err(ObjectError::NoGcsCredentials),
        }
    }

    /// A service account's JSON key file: `client_email`, `private_key_id` and `private_key`.
    /// Errors say where and what was expected, never what the file holds.
    pub fn from_file(path: &Path) -> Result<GcsKey, ObjectError> {
        let fail = |cause: String| ObjectError::CredentialsFile {
            path: path.to_path_buf(),
            cause,
        };
        let text = read_small(path).map_err(fail)?;
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|err| {
            fail(format!(
                "line {}: not JSON; a gs:// storage's credentials_file is a service account's JSON key",
                err.line()
            ))
        })?;
        let serde_json::Value::Object(map) = &value else {
            return Err(fail(
                "not a JSON object; a gs:// storage's credentials_file is a service account's JSON key"
                    .to_owned(),
            ));
        };
        if let Some(kind) = map.get("type")
            && kind.as_str() != Some("service_account")
        {
            return Err(fail(
                "`type` is not \"service_account\": give a service account's key (user credentials are not supported)".to_owned(),
            ));
        }
        let field = |name: &str| {
            map.get(name)
                .and_then(serde_json::Value::as_str)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| {
                    fail(format!(
                        "`{name}` is missing or not a string (a service account's key has client_email, private_key_id and private_key)"
                    ))
                })
        };
        let client_email = field("client_email")?;
        field("private_key_id")?;
        field("private_key")?;
        let plain_http = map
            .get("gcs_base_url")
            .and_then(serde_json::Value::as_str)
            .is_some_and(|url| url.starts_with("http://"));
        Ok(GcsKey {
            json: text,
            client_email,
            plain_http,
        })
    }
}

/// How the daemon signs its requests to a bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// S3 access keys (an `s3://` storage).
    S3(Credentials),
    /// A service account's key (a `gs://` storage).
    Gcs(GcsKey),
}

impl Access {
    pub fn provider(&self) -> Provider {
        match self {
            Access::S3(_) => Provider::S3,
            Access::Gcs(_) => Provider::Gcs,
        }
    }

    /// The S3 keys, for an `s3://` storage.
    pub fn s3(&self) -> Option<&Credentials> {
        match self {
            Access::S3(credentials) => Some(credentials),
            Access::Gcs(_) => None,
        }
    }

    /// The key's public part: the S3 key id or the service account's email.
    pub fn key_id(&self) -> &str {
        match self {
            Access::S3(credentials) => &credentials.access_key_id,
            Access::Gcs(key) => &key.client_email,
        }
    }
}

/// A small file's text (a credentials file): at most 64 KiB, or a message.
fn read_small(path: &Path) -> Result<String, String> {
    read_small_file(path).map_err(|err| crate::os_error::OsCause(&err).to_string())
}

/// The text of a key or credentials file: opened without waiting (a FIFO would block the open,
/// and the start or a reload with it, until something wrote into it), refused when it is a
/// FIFO or a socket, read no further than 64 KiB (`/dev/zero` would be read until memory
/// runs out).
pub(crate) fn read_small_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    const MAX_BYTES: u64 = 64 * 1024;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if kind.is_fifo() || kind.is_socket() {
        return Err(std::io::Error::other(
            "it is a FIFO or a socket, not a file: name a regular file",
        ));
    }
    let mut text = String::new();
    file.take(MAX_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_BYTES {
        return Err(std::io::Error::other(format!(
            "more than {} KiB: not a credentials file or key file",
            MAX_BYTES / 1024
        )));
    }
    Ok(text)
}

/// The bucket and prefix of an `s3://bucket/prefix` (or `gs://bucket/prefix`) URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub provider: Provider,
    pub bucket: String,
    /// Without leading or trailing `/`; empty for the whole bucket.
    pub prefix: String,
}

impl S3Url {
    /// Parses `s3://bucket` or `s3://bucket/prefix/…` (a trailing `/` is ignored), and the same
    /// with `gs://` (Google Cloud Storage).
    pub fn parse(url: &str) -> Result<S3Url, ObjectError> {
        // Never the URL as written in an error: it may hold keys (`s3://KEY:SECRET@bucket`).
        let fail = |reason: &'static str| ObjectError::Url {
            url: crate::config::print::redact_url(url),
            reason,
        };
        let (provider, rest) = match (url.strip_prefix("s3://"), url.strip_prefix("gs://")) {
            (Some(rest), _) => (Provider::S3, rest),
            (None, Some(rest)) => (Provider::Gcs, rest),
            (None, None) => return Err(fail("must start with s3:// or gs://")),
        };
        // Anywhere in it: a secret key may hold `/` (AWS's do) or `?`, which end a URL's
        // authority, so that `s3://KEY:ab/cd@bucket` passed with its `ab` as the bucket, and
        // `s3://KEY:a?b@bucket` was echoed whole. Everything before the last `@` is hidden.
        if let Some(at) = rest.rfind('@') {
            return Err(ObjectError::Url {
                url: format!("{}REDACTED{}", &url[..url.len() - rest.len()], &rest[at..]),
                reason: "holds credentials (`key:secret@`) or an `@`: the daemon's keys go in `credentials_file` (or the AWS environment variables), never in the URL",
            });
        }
        if rest.contains(['?', '#']) {
            return Err(fail(
                "holds a `?` or `#`: a storage URL names a bucket and a prefix only, never a query or a fragment",
            ));
        }
        if rest.contains('\\') {
            return Err(fail(
                "holds a backslash, which S3 keys Claid writes may not hold; separate folders with `/`",
            ));
        }
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(fail("names no bucket (`s3://BUCKET/…`)"));
        }
        if bucket.contains('@') {
            return Err(fail(
                "holds credentials (`key:secret@`): the daemon's keys go in `credentials_file` (or the AWS environment variables), never in the URL",
            ));
        }
        check_bucket(bucket).map_err(fail)?;
        let prefix = normalize_prefix(prefix).map_err(|err| match err {
            ObjectError::UnsafeKey { reason, .. } => fail(reason),
            _ => fail("invalid prefix"),
        })?;
        Ok(S3Url {
            provider,
            bucket: bucket.to_owned(),
            prefix,
        })
    }
}

/// Everything needed to reach one bucket and prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectStorageConfig {
    pub bucket: String,
    /// Key prefix inside the bucket (`a/b`, with or without slashes at the ends; empty = none).
    pub prefix: String,
    /// `http(s)://host:port` of an S3-compatible server; `None` = Amazon S3 itself.
    pub endpoint: Option<String>,
    /// Signing region (S3 only); `None` = `us-east-1`.
    pub region: Option<String>,
    /// The keys, which also say which kind of bucket it is.
    pub access: Access,
}

/// Amazon S3's endpoint when a storage names none: it answers a bucket's `HEAD` from any
/// region, naming the bucket's own in `x-amz-bucket-region`.
const AWS_GLOBAL_ENDPOINT: &str = "https://s3.amazonaws.com";
/// Whether `name`, read from an S3 answer, looks like a region (`eu-west-3`): letters,
/// digits and dashes, at most 64 bytes; anything else is not repeated in a hint.
pub fn is_region_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// How long [`ObjectStorage::bucket_region`] waits for its answer.
const REGION_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// What a listing, a head or a write reports about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The key relative to the storage's prefix.
    pub key: String,
    pub size: u64,
    pub e_tag: Option<String>,
    pub last_modified: Option<SystemTime>,
}

/// One bucket and prefix, ready for requests. Cheap to clone.
#[derive(Clone)]
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    provider: Provider,
    bucket: String,
    prefix: String,
    /// Where S3 tells the bucket's region (`HEAD` of the bucket, path style); `None` for GCS.
    region_url: Option<String>,
}

impl std::fmt::Debug for ObjectStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStorage")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Why an object operation (or setting one up) failed.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("invalid object key \"{}\": {reason}", escape(key))]
    UnsafeKey { key: String, reason: &'static str },
    #[error(
        "invalid storage URL \"{}\": {reason} (write s3://BUCKET/PREFIX or gs://BUCKET/PREFIX)",
        escape(&crate::text::redact_credentials(url))
    )]
    Url { url: String, reason: &'static str },
    #[error(
        "no S3 credentials: {missing}; give a credentials file (YAML with access_key_id and secret_access_key) or set both variables"
    )]
    NoCredentials { missing: &'static str },
    #[error(
        "no Google credentials: give a credentials file (a service account's JSON key) or set GOOGLE_APPLICATION_CREDENTIALS to one"
    )]
    NoGcsCredentials,
    #[error("cannot read the credentials file {}: {cause}", path.display())]
    CredentialsFile { path: PathBuf, cause: String },
    #[error("cannot set up storage {bucket}: {cause}")]
    Setup { bucket: String, cause: String },
    #[error("cannot {op} {uri}: object not found")]
    NotFound { op: &'static str, uri: String },
    #[error("cannot {op} {uri}: access denied: {cause}")]
    Denied {
        op: &'static str,
        uri: String,
        cause: String,
    },
    #[error("cannot {op} {uri}: the object is {size} bytes, more than the {max} allowed")]
    TooLarge {
        op: &'static str,
        uri: String,
        size: u64,
        max: u64,
    },
    #[error("cannot {op} {uri}: {cause}")]
    Request {
        op: &'static str,
        uri: String,
        cause: String,
    },
}

impl ObjectError {
    /// Stable kebab-case code, for reports and persisted failure reasons.
    pub fn code(&self) -> &'static str {
        match self {
            ObjectError::UnsafeKey { .. } => "object-unsafe-key",
            ObjectError::Url { .. } => "object-storage-url",
            ObjectError::NoCredentials { .. }
            | ObjectError::NoGcsCredentials
            | ObjectError::CredentialsFile { .. } => "object-credentials",
            ObjectError::Setup { .. } => "object-storage-config",
            ObjectError::NotFound { .. } => "object-not-found",
            ObjectError::Denied { .. } => "object-access-denied",
            ObjectError::TooLarge { .. } => "object-too-large",
            ObjectError::Request { .. } => "object-storage-io",
        }
    }

    /// A write answered "not found": the bucket does not exist (see [`ObjectStorage::put`];
    /// a write object_store retried comes as "not found").
    pub fn no_such_bucket(&self) -> bool {
        match self {
            ObjectError::Request {
                op: "write", cause, ..
            } => cause.ends_with(NO_SUCH_BUCKET),
            ObjectError::NotFound { op, .. } => *op == "write",
            _ => false,
        }
    }
}

/// The folder under a storage's prefix that [`ObjectStorage::bucket_exists`] lists: no one
/// writes there, so the listing is empty in a bucket that exists.
const BUCKET_CHECK_FOLDER: &str = ".claid-hotfolder-bucket-check";

/// How [`ObjectStorage::put`] ends the cause of a write into a bucket that does not exist.
const NO_SUCH_BUCKET: &str = "does not exist (NoSuchBucket)";

impl ObjectStorage {
    /// Builds the client; makes no request (a wrong endpoint or key shows at the first call).
    pub fn new(config: &ObjectStorageConfig) -> Result<ObjectStorage, ObjectError> {
        let provider = config.access.provider();
        let setup = |cause: String| ObjectError::Setup {
            bucket: format!("{}://{}", provider.scheme(), config.bucket),
            cause,
        };
        check_bucket(&config.bucket).map_err(|reason| setup(format!("bucket name {reason}")))?;
        let prefix = normalize_prefix(&config.prefix)?;
        let mut options = ClientOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(CONNECT_TIMEOUT);
        let retry = RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: MAX_RETRIES,
            retry_timeout: RETRY_TIMEOUT,
        };
        let credentials = match &config.access {
            Access::S3(credentials) => credentials,
            Access::Gcs(key) => {
                if config.endpoint.is_some() {
                    return Err(setup(
                        "an endpoint applies to s3:// storages only: a gs:// storage is reached through Google's own API".to_owned(),
                    ));
                }
                let store = GoogleCloudStorageBuilder::new()
                    .with_bucket_name(&config.bucket)
                    .with_service_account_key(&key.json)
                    .with_retry(retry)
                    .with_client_options(options.with_allow_http(key.plain_http))
                    .build()
                    // The builder's errors may quote the key: never shown.
                    .map_err(|_| {
                        setup(
                            "the service account's key cannot be used (is private_key a PEM RSA key?)"
                                .to_owned(),
                        )
                    })?;
                return Ok(ObjectStorage {
                    store: Arc::new(store),
                    provider,
                    bucket: config.bucket.clone(),
                    prefix,
                    region_url: None,
                });
            }
        };
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(config.region.as_deref().unwrap_or("us-east-1"))
            .with_access_key_id(&credentials.access_key_id)
            .with_secret_access_key(&credentials.secret_access_key)
            .with_retry(retry);
        if let Some(token) = &credentials.session_token {
            builder = builder.with_token(token);
        }
        if let Some(endpoint) = &config.endpoint {
            let endpoint = endpoint.trim_end_matches('/');
            let plain = endpoint.starts_with("http://");
            if !plain && !endpoint.starts_with("https://") {
                return Err(setup(format!(
                    "endpoint \"{}\" must be an http:// or https:// URL",
                    escape(endpoint)
                )));
            }
            options = options.with_allow_http(plain);
            // Path-style requests (`endpoint/bucket/key`): what S3-compatible servers expect.
            builder = builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false);
        }
        let store = builder
            .with_client_options(options)
            .build()
            .map_err(|err| setup(describe(&err)))?;
        let endpoint = config
            .endpoint
            .as_deref()
            .map_or(AWS_GLOBAL_ENDPOINT, |e| e.trim_end_matches('/'));
        Ok(ObjectStorage {
            store: Arc::new(store),
            provider,
            bucket: config.bucket.clone(),
            prefix,
            region_url: Some(format!("{endpoint}/{}", config.bucket)),
        })
    }

    /// The region S3 names for the bucket in the `x-amz-bucket-region` header of its answer
    /// to an unsigned `HEAD` of the bucket (given whatever the answer's status: 200, 301 or
    /// 403), when a request signed for the storage's `region` was refused as signed for the
    /// wrong one without naming the right one. `None` when it cannot tell (GCS, no header, no
    /// answer within a few seconds).
    pub async fn bucket_region(&self) -> Option<String> {
        let url = self.region_url.as_ref()?;
        let client = reqwest::Client::builder()
            .timeout(REGION_LOOKUP_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .ok()?;
        let answer = client.head(url).send().await.ok()?;
        let region = answer
            .headers()
            .get("x-amz-bucket-region")?
            .to_str()
            .ok()?
            .trim();
        is_region_name(region).then(|| region.to_owned())
    }

    /// Amazon S3 (or S3-compatible) or Google Cloud Storage.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The key prefix, without slashes at its ends (empty for the whole bucket).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key in the bucket (prefix included) of the object `key`, after [`check_key`].
    pub fn bucket_key(&self, key: &str) -> Result<String, ObjectError> {
        check_key(key)?;
        let full = self.join(key);
        if full.len() > MAX_KEY_BYTES {
            return Err(ObjectError::UnsafeKey {
                key: key.to_owned(),
                reason: "longer than the 1024 bytes S3 allows (prefix included)",
            });
        }
        Ok(full)
    }

    /// `s3://bucket/prefix/key` (`gs://…`), for messages and records (not checked).
    pub fn uri(&self, key: &str) -> String {
        format!(
            "{}://{}/{}",
            self.provider.scheme(),
            self.bucket,
            self.join(key)
        )
    }

    /// The bytes of `key`; an object larger than `max_bytes` is refused before its body is read.
    pub async fn get(&self, key: &str, max_bytes: u64) -> Result<Bytes, ObjectError> {
        Ok(self.get_with_attributes(key, max_bytes).await?.0)
    }

    /// [`ObjectStorage::get`], with the object's attributes (its `Content-Type` and the like).
    async fn get_with_attributes(
        &self,
        key: &str,
        max_bytes: u64,
    ) -> Result<(Bytes, object_store::Attributes), ObjectError> {
        let path = self.path(key)?;
        let op = "read";
        let result = self
            .store
            .get(&path)
            .await
            .map_err(|err| self.failed(op, key, err))?;
        if result.meta.size > max_bytes {
            return Err(ObjectError::TooLarge {
                op,
                uri: self.uri(key),
                size: result.meta.size,
                max: max_bytes,
            });
        }
        let attributes = result.attributes.clone();
        let bytes = result
            .bytes()
            .await
            .map_err(|err| self.failed(op, key, err))?;
        Ok((bytes, attributes))
    }

    /// The bytes of `key` in `range` (a range past the object's end is cut at its end).
    pub async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, ObjectError> {
        let path = self.path(key)?;
        match self.store.get_range(&path, range.clone()).await {
            Ok(bytes) => Ok(bytes),
            // A server that ignores `Range` (HTTP allows it: a proxy, a plain web server in
            // front) answers 200 with the whole object: read through, keeping the range. It
            // failed the check of every billed output at once (`storage-unreachable`).
            Err(err) if ignores_range(&describe(&err)) => {
                self.range_of_whole(&path, key, range).await
            }
            Err(err) => Err(self.failed("read", key, err)),
        }
    }

    /// `range` of `key`'s bytes, read from a plain GET of the whole object (its bytes past the
    /// range are not read; those before it are read and dropped).
    async fn range_of_whole(
        &self,
        path: &StorePath,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, ObjectError> {
        let result = self
            .store
            .get(path)
            .await
            .map_err(|err| self.failed("read", key, err))?;
        let mut stream = result.into_stream();
        let mut at = 0u64;
        let mut kept = Vec::with_capacity(usize::try_from(range.end - range.start).unwrap_or(0));
        while at < range.end {
            let Some(chunk) = stream
                .try_next()
                .await
                .map_err(|err| self.failed("read", key, err))?
            else {
                break;
            };
            let end = at + chunk.len() as u64;
            if end > range.start {
                let from = usize::try_from(range.start.saturating_sub(at)).unwrap_or(0);
                let to = usize::try_from(range.end.min(end) - at).unwrap_or(chunk.len());
                kept.extend_from_slice(&chunk[from..to]);
            }
            at = end;
        }
        Ok(Bytes::from(kept))
    }

    /// Writes `bytes` to `key`: the object appears whole or not at all. Over [`PARTS_OVER`]
    /// bytes it is sent in parts of [`PART_SIZE`], one after the other ([`Self::put_in_parts`]).
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<ObjectInfo, ObjectError> {
        self.put_with_attributes(key, bytes, object_store::Attributes::new())
            .await
    }

    /// [`ObjectStorage::put`], giving the object `attributes` (its `Content-Type` and the like).
    async fn put_with_attributes(
        &self,
        key: &str,
        bytes: Bytes,
        attributes: object_store::Attributes,
    ) -> Result<ObjectInfo, ObjectError> {
        let path = self.path(key)?;
        let size = bytes.len() as u64;
        let put = if bytes.len() > PARTS_OVER {
            self.put_in_parts(&path, bytes, attributes).await
        } else {
            let options = object_store::PutOptions {
                attributes,
                ..Default::default()
            };
            self.store
                .put_opts(&path, PutPayload::from_bytes(bytes), options)
                .await
        };
        let put = put.map_err(|err| match err {
            // A write makes the object: a 404 can only be the bucket's (NoSuchBucket).
            object_store::Error::NotFound { .. } => ObjectError::Request {
                op: "write",
                uri: self.uri(key),
                cause: format!("the bucket {} {NO_SUCH_BUCKET}", self.bucket),
            },
            other => self.failed("write", key, other),
        })?;
        Ok(ObjectInfo {
            key: key.to_owned(),
            size,
            e_tag: put.e_tag,
            last_modified: None,
        })
    }

    /// `bytes` written to `path` as a multipart upload, one part on the wire at a time: each
    /// request then stays within the client's [`REQUEST_TIMEOUT`] down to an uplink of about
    /// 90 KB/s. In one request, a 20 MB file over 2 Mbit/s never finished within it, and was
    /// sent again and again, told as a bucket that does not answer. A part (the last one
    /// too) or the completion that fails aborts the upload (its parts are removed; the
    /// object never appears); one cut off by a stop leaves its parts to the bucket's rule for
    /// incomplete uploads (docs/storage.md).
    async fn put_in_parts(
        &self,
        path: &StorePath,
        mut bytes: Bytes,
        attributes: object_store::Attributes,
    ) -> object_store::Result<object_store::PutResult> {
        let options = object_store::PutMultipartOptions {
            attributes,
            ..Default::default()
        };
        let mut upload = self.store.put_multipart_opts(path, options).await?;
        let mut failed = None;
        while !bytes.is_empty() {
            let part = bytes.split_to(bytes.len().min(PART_SIZE));
            if let Err(err) = upload.put_part(PutPayload::from_bytes(part)).await {
                failed = Some(err);
                break;
            }
        }
        let result = match failed {
            Some(err) => Err(err),
            None => upload.complete().await,
        };
        if result.is_err() {
            let _ = upload.abort().await;
        }
        result
    }

    /// Copies `key` of `from` (another prefix or bucket of the same endpoint and keys) to
    /// `key` here: by the server itself within one bucket, else read (at most `max_bytes`)
    /// and written with its attributes (`Content-Type`). Returns what the write reports.
    pub async fn copy_from(
        &self,
        from: &ObjectStorage,
        key: &str,
        max_bytes: u64,
    ) -> Result<ObjectInfo, ObjectError> {
        if from.bucket == self.bucket && from.provider == self.provider {
            let source = from.path(key)?;
            let path = self.path(key)?;
            self.store
                .copy(&source, &path)
                .await
                .map_err(|err| self.failed("copy", key, err))?;
            return self.head(key).await;
        }
        // Read and written with its attributes: the object served from the new place keeps
        // its `Content-Type` (a CDN in front of the bucket served the copy as a download).
        let (bytes, attributes) = from.get_with_attributes(key, max_bytes).await?;
        self.put_with_attributes(key, bytes, attributes).await
    }

    /// Size and tag of `key`, without its body.
    pub async fn head(&self, key: &str) -> Result<ObjectInfo, ObjectError> {
        let path = self.path(key)?;
        let meta = self
            .store
            .head(&path)
            .await
            .map_err(|err| self.failed("head", key, err))?;
        Ok(self.info(meta, key))
    }

    /// The objects under `folder` (relative, `""` for the whole prefix; a trailing `/` is
    /// optional), sorted by key: direct children only, or every descendant when `recursive`.
    pub async fn list(
        &self,
        folder: &str,
        recursive: bool,
    ) -> Result<Vec<ObjectInfo>, ObjectError> {
        let folder = folder.trim_end_matches('/');
        if !folder.is_empty() {
            check_key(folder)?;
        }
        let full = self.join(folder);
        let prefix = StorePath::parse(&full).map_err(|err| ObjectError::UnsafeKey {
            key: folder.to_owned(),
            reason: path_reason(&err),
        })?;
        let prefix = (!full.is_empty()).then_some(prefix);
        let op = "list";
        let fail = |err| self.failed(op, &format!("{folder}/"), err);
        let metas = if recursive {
            self.store
                .list(prefix.as_ref())
                .try_collect::<Vec<_>>()
                .await
                .map_err(fail)?
        } else {
            self.store
                .list_with_delimiter(prefix.as_ref())
                .await
                .map_err(fail)?
                .objects
        };
        let mut infos: Vec<ObjectInfo> = metas
            .into_iter()
            .filter_map(|meta| {
                let key = self.relative(meta.location.as_ref())?.to_owned();
                Some(self.info(meta, &key))
            })
            .collect();
        infos.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(infos)
    }

    /// Whether the prefix can be listed: one listing request that reads at most its first
    /// page, whatever the prefix holds (the check `validate` and the daemon's start make).
    pub async fn probe(&self) -> Result<(), ObjectError> {
        let prefix = self.prefix_path()?;
        let mut listing = self.store.list(prefix.as_ref());
        match tokio::time::timeout(PROBE_TIMEOUT, listing.try_next()).await {
            Ok(Ok(_)) => self.probe_absent().await,
            Ok(Err(err)) => Err(self.failed("list", "", err)),
            Err(_) => Err(ObjectError::Request {
                op: "list",
                uri: self.uri(""),
                cause: format!(
                    "the bucket's server took the connection but did not answer a listing within {} s (a server that hangs, or a proxy or firewall in between holding the connection; check the storage's `endpoint`)",
                    PROBE_TIMEOUT.as_secs()
                ),
            }),
        }
    }

    /// The storage's prefix as a path to list under; `None` for the whole bucket.
    fn prefix_path(&self) -> Result<Option<StorePath>, ObjectError> {
        if self.prefix.is_empty() {
            return Ok(None);
        }
        StorePath::parse(&self.prefix)
            .map(Some)
            .map_err(|err| ObjectError::UnsafeKey {
                key: self.prefix.clone(),
                reason: path_reason(&err),
            })
    }

    /// Whether the bucket exists: one listing, of a folder under the prefix that holds nothing
    /// (its answer is a few hundred bytes; a listing of the prefix itself brought a page of up
    /// to a thousand keys, some 200 KB, for every check). S3 answers a `HEAD` in a bucket that
    /// does not exist (deleted, or a proxy in between answering for another) `404` with no
    /// body, like a missing object; a listing tells the two apart (`NoSuchBucket`). `Err`: the
    /// listing was answered otherwise, or not within [`PROBE_TIMEOUT`].
    pub async fn bucket_exists(&self) -> Result<bool, ObjectError> {
        let folder = self
            .prefix_path()?
            .unwrap_or_default()
            .child(BUCKET_CHECK_FOLDER);
        match self.first_listed(Some(&folder)).await {
            // Keys allowed to list the prefix itself only (an IAM condition on `s3:prefix`
            // that names it exactly), as the start checked: that listing, then.
            Err(ObjectError::Denied { .. }) => {
                let prefix = self.prefix_path()?;
                self.first_listed(prefix.as_ref()).await
            }
            answer => answer,
        }
    }

    /// [`ObjectStorage::bucket_exists`]'s listing of `folder`: `Ok(false)` when S3 answers that
    /// the bucket does not exist.
    async fn first_listed(
        &self,
        folder: Option<&object_store::path::Path>,
    ) -> Result<bool, ObjectError> {
        let mut listing = self.store.list(folder);
        match tokio::time::timeout(PROBE_TIMEOUT, listing.try_next()).await {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(err)) => match self.failed("list", "", err) {
                ObjectError::NotFound { .. } => Ok(false),
                ObjectError::Request { cause, .. } if cause.contains("NoSuchBucket") => Ok(false),
                other => Err(other),
            },
            Err(_) => Err(ObjectError::Request {
                op: "list",
                uri: self.uri(""),
                cause: format!(
                    "no answer to a listing within {} s (timed out)",
                    PROBE_TIMEOUT.as_secs()
                ),
            }),
        }
    }

    /// The second half of [`ObjectStorage::probe`]: a `HEAD` of a key no one wrote must be
    /// answered "not found". A server that is not the bucket's (a web console's port, a
    /// proxy's default page answering 200 to everything) passed the listing, then told every
    /// output "already there": `skip` kept nothing and reported success, `replace` failed
    /// every billed image. Also asked at run time when an output object read is not the
    /// edit's image (a proxy that began answering pages since the start).
    pub async fn probe_absent(&self) -> Result<(), ObjectError> {
        let key = format!(".claid-hotfolder-probe-{:016x}", rand::random::<u64>());
        // Answered 200 without the headers every S3 object's answer has (a page served
        // chunked, without `Content-Length`): a server that is not the bucket's too. (It was
        // told as an endpoint that does not answer: 69, waited out, instead of 64.)
        let headless = |err: &ObjectError| matches!(err, ObjectError::Request { cause, .. } if cause.contains("Header missing from response"));
        let head = tokio::time::timeout(PROBE_TIMEOUT, self.head(&key)).await;
        // A `HEAD` answered "not found", then a `GET` of it, judged alike: a proxy may pass
        // `HEAD`s to the bucket and answer `GET`s with its page (a kept object was then read
        // as "no image", and `skip` had Claid write over it: acceptance run). `Err(op)`: no
        // answer in time.
        let answered = match head.map(|answer| answer.map(drop)) {
            Ok(Err(ObjectError::NotFound { .. })) => {
                tokio::time::timeout(PROBE_TIMEOUT, self.get_range(&key, 0..1))
                    .await
                    .map(|answer| answer.map(drop))
                    .map_err(|_| "get")
            }
            other => other.map_err(|_| "head"),
        };
        match answered {
            Ok(Err(ObjectError::NotFound { .. })) => Ok(()),
            Ok(Err(err)) if !headless(&err) => Err(err),
            Ok(_) => Err(self.not_s3(&key)),
            Err(op) => Err(ObjectError::Request {
                op,
                uri: self.uri(&key),
                cause: format!(
                    "the bucket's server took the connection but did not answer within {} s",
                    PROBE_TIMEOUT.as_secs()
                ),
            }),
        }
    }

    /// [`ObjectStorage::probe_absent`]'s answer when the endpoint says `key`, which no one
    /// wrote, is there.
    fn not_s3(&self, key: &str) -> ObjectError {
        ObjectError::Setup {
            bucket: self.bucket.clone(),
            cause: format!(
                "its endpoint does not answer as an S3 server: it says {}, which no one wrote, is there (a web page, a console's port, a proxy's default page?); give the storage's `endpoint` as the S3 API's address",
                self.uri(key)
            ),
        }
    }

    /// Deletes `key` (no error when it does not exist, as S3 answers).
    pub async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        let path = self.path(key)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(self.failed("delete", key, err)),
        }
    }

    fn join(&self, key: &str) -> String {
        match (self.prefix.is_empty(), key.is_empty()) {
            (true, _) => key.to_owned(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}/{key}", self.prefix),
        }
    }

    /// The key relative to the prefix of a full key the server listed.
    fn relative<'a>(&self, full: &'a str) -> Option<&'a str> {
        if self.prefix.is_empty() {
            return Some(full);
        }
        full.strip_prefix(self.prefix.as_str())?.strip_prefix('/')
    }

    fn path(&self, key: &str) -> Result<StorePath, ObjectError> {
        let full = self.bucket_key(key)?;
        StorePath::parse(full).map_err(|err| ObjectError::UnsafeKey {
            key: key.to_owned(),
            reason: path_reason(&err),
        })
    }

    fn info(&self, meta: object_store::ObjectMeta, key: &str) -> ObjectInfo {
        ObjectInfo {
            key: key.to_owned(),
            size: meta.size,
            e_tag: meta.e_tag,
            last_modified: Some(SystemTime::from(meta.last_modified)),
        }
    }

    fn failed(&self, op: &'static str, key: &str, err: object_store::Error) -> ObjectError {
        let uri = self.uri(key);
        match err {
            object_store::Error::NotFound { .. } => ObjectError::NotFound { op, uri },
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => ObjectError::Denied {
                op,
                uri,
                cause: describe(&err),
            },
            other => {
                let cause = describe(&other);
                if refused_keys(&cause) {
                    ObjectError::Denied { op, uri, cause }
                } else if answered_not_found(&cause) && op != "list" {
                    // object_store passes a 404 on as a plain error once it has retried the
                    // request (a read cut short, then "not found").
                    ObjectError::NotFound { op, uri }
                } else {
                    ObjectError::Request { op, uri, cause }
                }
            }
        }
    }
}

/// Whether a ranged read failed because the server answered the whole object (it ignores
/// `Range`, as HTTP allows) or a part without saying which.
fn ignores_range(cause: &str) -> bool {
    cause.contains("non-partial response when range requested")
        || cause.contains("Content-Range header not present")
}

/// Whether an S3 answer object_store passed on as a plain error (after its retries) is S3's
/// "no such key" or "no such bucket" (a 404 without S3's code may be no S3 server's at all:
/// told apart at the start). The callers tell the two apart with a listing, whose own
/// `NoSuchBucket` is read from its cause.
fn answered_not_found(cause: &str) -> bool {
    cause.contains("NoSuchKey") || cause.contains("NoSuchBucket")
}

/// Whether an S3 answer object_store passed on as a plain error refuses the request's
/// signature or keys (a 403 with one of S3's codes for it): the keys are wrong or may not do
/// this, which no retry heals.
fn refused_keys(cause: &str) -> bool {
    cause.contains("403 Forbidden")
        || [
            "SignatureDoesNotMatch",
            "InvalidAccessKeyId",
            "AccessDenied",
            "InvalidToken",
            "ExpiredToken",
        ]
        .iter()
        .any(|code| cause.contains(code))
}

/// Checks a key under a storage's `prefix` (without slashes at its ends) as S3 will see it:
/// [`check_key`], and the whole key, prefix included, within [`MAX_KEY_BYTES`].
pub fn check_key_under(prefix: &str, key: &str) -> Result<(), ObjectError> {
    check_key(key)?;
    let full = if prefix.is_empty() {
        key.len()
    } else {
        prefix.len() + 1 + key.len()
    };
    if full > MAX_KEY_BYTES {
        return Err(ObjectError::UnsafeKey {
            key: key.to_owned(),
            reason: "longer than the 1024 bytes S3 allows (prefix included)",
        });
    }
    Ok(())
}

/// Checks a key relative to a prefix: not empty, no leading `/`, no empty, `.` or `..` segment,
/// no control character. A key that passes cannot name anything outside the prefix.
pub fn check_key(key: &str) -> Result<(), ObjectError> {
    let refuse = |reason: &'static str| {
        Err(ObjectError::UnsafeKey {
            key: key.to_owned(),
            reason,
        })
    };
    if key.is_empty() {
        return refuse("it is empty");
    }
    if key.starts_with('/') {
        return refuse("it starts with \"/\"");
    }
    if key.chars().any(char::is_control) {
        return refuse("it holds a control character");
    }
    for segment in key.split('/') {
        match segment {
            "" => return refuse("it holds an empty segment (\"//\" or a trailing \"/\")"),
            "." | ".." => {
                return refuse("it holds a \".\" or \"..\" segment: keys never leave the prefix");
            }
            _ => {}
        }
    }
    // The same once percent-decoded and with a backslash read as a slash, as a service on the
    // way (Claid's storage reader, a proxy) may do: `%2e%2e/x.png` and `..\x.png` would leave
    // the prefix there; decoded again while that changes it (`%252e` is `%2e` once decoded), a
    // few times.
    let mut read = key.to_owned();
    for _ in 0..4 {
        let next = percent_encoding::percent_decode_str(&read)
            .decode_utf8_lossy()
            .replace('\\', "/");
        if next == read {
            break;
        }
        read = next;
    }
    if read
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return refuse(
            "it holds a \".\" or \"..\" segment once read as a URL path (\"%2e\" is \".\", \"%2f\", \"%5c\" and \"\\\" are \"/\", \"%25\" is \"%\"): keys never leave the prefix",
        );
    }
    Ok(())
}

/// `key` (or a URI) under its format's other usual extension, where Claid may write an output
/// asked at `key`: `a.jpg` ↔ `a.jpeg`, `a.tif` ↔ `a.tiff`, the other in lower case (`a.JPG`
/// → `a.jpeg`). The daemon takes an object at either for the output
/// (`pipeline::job::objects_at`), so an output occupies both keys ([`output_keys`]): two outputs
/// whose keys share one are one object, and so are an output and an input at one of its keys.
/// `None` for another extension.
pub fn twin_key(key: &str) -> Option<String> {
    let (stem, ext) = key.rsplit_once('.')?;
    if stem.is_empty() || ext.contains('/') {
        return None;
    }
    let other = match ext.to_ascii_lowercase().as_str() {
        "jpg" => "jpeg",
        "jpeg" => "jpg",
        "tif" => "tiff",
        "tiff" => "tif",
        _ => return None,
    };
    Some(format!("{stem}.{other}"))
}

/// The keys an output object asked at `key` occupies: `key`, then its [`twin_key`]. Compared
/// as written alone, two rows writing `x.jpg` and `x.jpeg` were both accepted, and one was
/// recorded done with the other's object, never made.
pub fn output_keys(key: &str) -> impl Iterator<Item = String> + '_ {
    std::iter::once(key.to_owned()).chain(twin_key(key))
}

/// [`check_key`] for a key Claid writes (an output object, a destination folder), whose
/// object the daemon then looks for at that key: also no `?` or `#` (they end the path of a
/// `storage://` URI) and nothing another reading would cut into other folders (`a%2Fb`,
/// `a\b`) or end (`%3F`, `%23`). Such keys were accepted, Claid (which may decode them)
/// wrote another object, and the billed image failed `object-missing`.
pub fn check_written_key(key: &str) -> Result<(), ObjectError> {
    check_key(key)?;
    let refuse = |reason: &'static str| {
        Err(ObjectError::UnsafeKey {
            key: key.to_owned(),
            reason,
        })
    };
    if key.contains(['?', '#']) {
        return refuse(
            "it holds \"?\" or \"#\", which end the path of a storage:// URI (a query, a fragment); rename the file or folder",
        );
    }
    let read = percent_encoding::percent_decode_str(key)
        .decode_utf8_lossy()
        .replace('\\', "/");
    if read.matches('/').count() != key.matches('/').count() || read.contains(['?', '#']) {
        return refuse(
            "it holds \"%2f\", \"%5c\" or \"\\\" (read as \"/\" by a service on the way) or an escaped \"?\" or \"#\": the object written could be another; use \"/\" between folders and rename the rest",
        );
    }
    Ok(())
}

/// A prefix without slashes at its ends, its segments checked like a key's.
fn normalize_prefix(prefix: &str) -> Result<String, ObjectError> {
    let trimmed = prefix.trim_matches('/');
    if !trimmed.is_empty() {
        check_key(trimmed)?;
    }
    Ok(trimmed.to_owned())
}

/// S3's bucket naming rules, loosely: what keeps a name usable in a path-style URL. The error
/// completes "bucket name …".
pub fn check_bucket(bucket: &str) -> Result<(), &'static str> {
    if bucket.is_empty() {
        return Err("is empty");
    }
    // Amazon's legacy us-east-1 names run to 255 characters (its rule today, and most
    // S3-compatible servers', is 63; a server that refuses a longer one says so itself).
    if bucket.len() > 255 {
        return Err("is longer than 255 characters");
    }
    if !bucket
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err("may hold only letters, digits, \".\", \"-\" and \"_\"");
    }
    Ok(())
}

/// The bucket naming rules of Amazon S3 and Google Cloud Storage themselves, for a storage with
/// no `endpoint` of its own (S3-compatible servers are looser, so [`check_bucket`] is). For S3
/// only what has always held: buckets made in `us-east-1` before 2018 may still have upper-case
/// letters and `_`, and are served. The error completes "bucket name …".
pub fn check_provider_bucket(provider: Provider, bucket: &str) -> Result<(), &'static str> {
    if bucket.len() < 3 {
        return Err("is shorter than 3 characters");
    }
    if provider == Provider::Gcs {
        if !bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_'))
        {
            return Err(
                "may hold only lower-case letters, digits, \".\", \"-\" and \"_\" on Google Cloud Storage",
            );
        }
        // 63 characters, or 222 in all for a name with dots (each part 63 at most).
        if bucket.len() > 222 || bucket.split('.').any(|part| part.len() > 63) {
            return Err(
                "is too long for Google Cloud Storage (63 characters, or 222 with dots and 63 between them)",
            );
        }
        if bucket.starts_with("goog") || bucket.contains("google") {
            return Err("may not begin with \"goog\" or hold \"google\" on Google Cloud Storage");
        }
    }
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge(bucket.chars().next()) || !edge(bucket.chars().last()) {
        return Err("must begin and end with a letter or a digit");
    }
    if bucket.contains("..") {
        return Err("holds two dots in a row");
    }
    Ok(())
}

fn path_reason(err: &object_store::path::Error) -> &'static str {
    match err {
        object_store::path::Error::EmptySegment { .. } => "it holds an empty segment",
        object_store::path::Error::BadSegment { .. } => {
            "it holds a \".\" or \"..\" segment or a control character"
        }
        _ => "it is not a valid object path",
    }
}

/// An `object_store` error as one line: its message, then the OS cause at the bottom of its
/// chain when the message does not already say it.
fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let message = without_xml(&err.to_string());
    let Some(root) = crate::os_error::root_cause(err) else {
        return escape(&message);
    };
    if let Some(short) = unanswered(&message, &root) {
        return escape(&short);
    }
    // The bottom of an S3 error's chain is the answer's body: an error document whose code
    // object_store's own message has usually told already.
    let told = xml_element(&root, "Code").is_some_and(|code| message.contains(&code));
    let root = without_xml(&root);
    if told || message.contains(&root) {
        escape(&message)
    } else {
        escape(&format!("{message}: {root}"))
    }
}

/// A request that got no answer (its OS cause `root` names one: `ECONNREFUSED: …`), told as
/// `no answer from HOST:PORT (METHOD, after N retries): ECONNREFUSED: connection refused`
/// instead of object_store's whole message (the object's URL, the retry settings). `None`
/// for anything else.
fn unanswered(message: &str, root: &str) -> Option<String> {
    let (name, _) = root.split_once(": ")?;
    let named = name.len() > 1
        && name.starts_with('E')
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    if !named {
        return None;
    }
    let after = message.split_once("Error performing ")?.1;
    let mut words = after.split_whitespace();
    let method = words.next()?;
    let url = reqwest::Url::parse(words.next()?).ok()?;
    let host = url.host_str()?;
    let port = url.port_or_known_default()?;
    let retries = message
        .split_once("after ")
        .and_then(|(_, rest)| rest.split_once(" retries"))
        .map(|(n, _)| n)
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()));
    let how = match retries {
        Some(n) => format!("{method}, after {n} retries"),
        None => method.to_owned(),
    };
    Some(format!("no answer from {host}:{port} ({how}): {root}"))
}

/// The text of the first `<name>…</name>` element in `text`, trimmed.
fn xml_element(text: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let from = text.find(&open)? + open.len();
    let to = text[from..].find(&close)? + from;
    Some(text[from..to].trim().to_owned())
}

/// `message` with an S3 error document in it (`<?xml …?><Error><Code>…</Code><Message>…`, which
/// object_store passes on as the body of an answer) told as `Code: Message`; a message without
/// one as it is.
fn without_xml(message: &str) -> String {
    let Some(start) = message.find("<?xml").or_else(|| message.find("<Error>")) else {
        return message.to_owned();
    };
    let element = |name: &str| xml_element(&message[start..], name);
    let said = match (element("Code"), element("Message")) {
        (Some(code), Some(text)) if !text.is_empty() => format!("{code}: {text}"),
        (Some(code), _) => code,
        (None, Some(text)) => text,
        (None, None) => "an error document without a code".to_owned(),
    };
    // What followed the document (object_store's own words after the body), if anything.
    let end = message[start..]
        .find("</Error>")
        .map_or(message.len(), |at| start + at + "</Error>".len());
    let head = message[..start].trim_end();
    let tail = message[end..].trim();
    let mut out = format!("{head} {said}");
    if !tail.is_empty() {
        out.push(' ');
        out.push_str(tail);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_object_key_has_its_formats_other_extension() {
        assert_eq!(twin_key("out/m/f1.tiff").as_deref(), Some("out/m/f1.tif"));
        assert_eq!(twin_key("out/m/f1.JPG").as_deref(), Some("out/m/f1.jpeg"));
        assert_eq!(twin_key("out/m/f1.png"), None);
        assert_eq!(twin_key("out/v1.2/f1"), None);
        assert_eq!(
            output_keys("s3://b/x.jpeg").collect::<Vec<_>>(),
            ["s3://b/x.jpeg", "s3://b/x.jpg"]
        );
        assert_eq!(output_keys("s3://b/x.png").count(), 1);
    }

    #[test]
    fn missing_s3_variables_are_named() {
        let only_key = |name: &str| (name == "AWS_ACCESS_KEY_ID").then(|| "AKIA".to_owned());
        let err = super::Credentials::from_vars(only_key)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("AWS_SECRET_ACCESS_KEY is not set (AWS_ACCESS_KEY_ID is)"),
            "{err}"
        );
        let err = super::Credentials::from_vars(|_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("neither AWS_ACCESS_KEY_ID nor"), "{err}");
        let both = |_: &str| Some("x".to_owned());
        assert!(super::Credentials::from_vars(both).is_ok());
    }

    use super::*;

    #[test]
    fn s3_error_documents_are_told_as_code_and_message() {
        let raw = "Client error with status 403 Forbidden: <?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match the signature you provided.</Message><RequestId>abc</RequestId></Error>";
        assert_eq!(
            without_xml(raw),
            "Client error with status 403 Forbidden: SignatureDoesNotMatch: The request signature we calculated does not match the signature you provided."
        );
        assert_eq!(
            without_xml("error <Error><Code>NoSuchBucket</Code></Error> (after 2 retries)"),
            "error NoSuchBucket (after 2 retries)"
        );
        assert_eq!(without_xml("connection refused"), "connection refused");
        assert!(
            refused_keys(&without_xml(raw)),
            "the code still tells a refused key"
        );
    }

    #[test]
    fn an_error_document_at_the_bottom_of_a_chain_is_not_appended() {
        #[derive(Debug)]
        struct Body;
        impl std::fmt::Display for Body {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("Server returned non-2xx status code: 404 Not Found: <?xml version=\"1.0\"?>\n<Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message></Error>")
            }
        }
        impl std::error::Error for Body {}
        #[derive(Debug)]
        struct Chained(&'static str, Body);
        impl std::fmt::Display for Chained {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for Chained {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.1)
            }
        }
        let told = "Error performing list request: 404 Not Found: NoSuchBucket: The specified bucket does not exist";
        assert_eq!(describe(&Chained(told, Body)), told);
        // A message that does not tell the code yet gets it from the document, without XML.
        let text = describe(&Chained("Generic S3 error", Body));
        assert!(
            text.starts_with(
                "Generic S3 error: Server returned non-2xx status code: 404 Not Found"
            ) && text.contains("NoSuchBucket: The specified bucket does not exist")
                && !text.contains('<'),
            "{text}"
        );
    }

    #[test]
    fn a_request_without_an_answer_is_told_by_host_port_and_os_cause() {
        let message = "Generic S3 error: Error performing HEAD http://127.0.0.1:19500/acme/images/staging/03ae.png in 381.46ms, after 3 retries, max_retries: 3, retry_timeout: 20s  - HTTP error: error sending request";
        assert_eq!(
            unanswered(message, "ECONNREFUSED: connection refused").as_deref(),
            Some(
                "no answer from 127.0.0.1:19500 (HEAD, after 3 retries): ECONNREFUSED: connection refused"
            )
        );
        // An answer's error, or a cause without an errno name, is told as it was.
        assert_eq!(unanswered(message, "dns error: failed to lookup"), None);
        assert_eq!(
            unanswered("Client error with status 403", "ECONNREFUSED: x"),
            None
        );
    }

    #[test]
    fn keys_that_could_leave_the_prefix_are_refused() {
        for key in [
            "",
            "/etc/passwd",
            "../x.png",
            "a/../../x.png",
            "a/./b.png",
            "a//b.png",
            "a/b/",
            "..",
            "a/\u{0}b",
            "a\nb",
            "%2e%2e/x.png",
            "a/%2E%2e/%2e%2E/x.png",
            "..%2fx.png",
            "..\\x.png",
            "a\\..\\..\\x.png",
            "a/%2e/b.png",
            ".%2E%5cx.png",
            "%252e%252e/x.png",
            "%25252E%25252e%25252Fx.png",
        ] {
            let err = check_key(key).expect_err(key);
            assert_eq!(err.code(), "object-unsafe-key", "{key}");
        }
        // A key Claid writes: also nothing a service that decodes the URI reads otherwise,
        // nor what ends its path.
        for key in [
            "back\\slash.png",
            "out/a%2Fb/x.png",
            "out/x?y=1/a.png",
            "out/x#y/a.png",
            "a%3Fb.png",
            "%2e%2e/x.png",
        ] {
            let err = check_written_key(key).expect_err(key);
            assert_eq!(err.code(), "object-unsafe-key", "{key}");
        }
        for key in ["a/b/c.png", "sp ace/é.png", "100%25.png", "caf%C3%A9/x.png"] {
            assert!(check_written_key(key).is_ok(), "{key}");
        }
        for key in [
            "a.png",
            "a/b/c.png",
            "a..b/c.png",
            "sp ace/é.png",
            "...png",
            "100%25.png",
            "a%2e.png",
            "back\\slash.png",
        ] {
            assert!(check_key(key).is_ok(), "{key}");
        }
    }

    #[test]
    fn an_s3_url_with_keys_in_it_is_refused_without_showing_them() {
        let err = S3Url::parse("s3://AKIAX:SuperSecretValue123@catalog/images")
            .expect_err("refused")
            .to_string();
        assert!(
            !err.contains("SuperSecretValue123") && !err.contains("AKIAX"),
            "{err}"
        );
        assert!(
            err.contains("REDACTED@catalog/images") && err.contains("credentials_file"),
            "{err}"
        );
    }

    #[test]
    fn s3_urls_split_into_bucket_and_prefix() {
        let parse = |url: &str| S3Url::parse(url).map(|u| (u.bucket, u.prefix)).ok();
        assert_eq!(parse("s3://b"), Some(("b".into(), String::new())));
        assert_eq!(parse("s3://b/"), Some(("b".into(), String::new())));
        assert_eq!(parse("s3://b/p/q/"), Some(("b".into(), "p/q".into())));
        // Google Cloud Storage, the same shape.
        let gs = S3Url::parse("gs://bkt/catalog/").expect("gs url");
        assert_eq!(
            (gs.provider, gs.bucket.as_str(), gs.prefix.as_str()),
            (Provider::Gcs, "bkt", "catalog")
        );
        assert_eq!(S3Url::parse("s3://bkt").expect("s3").provider, Provider::S3);
        for bad in [
            "http://b/p",
            "s3://",
            "s3:///p",
            "s3://b/../p",
            "s3://b a/p",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn bucket_keys_join_the_prefix_and_refuse_escapes() {
        let storage = ObjectStorage::new(&ObjectStorageConfig {
            bucket: "bkt".into(),
            prefix: "/catalog/raw/".into(),
            endpoint: Some("http://127.0.0.1:9".into()),
            region: None,
            access: Access::S3(Credentials::new("id", "secret")),
        })
        .expect("builds without a request");
        assert_eq!(storage.prefix(), "catalog/raw");
        assert_eq!(
            storage.bucket_key("a/b.png").ok().as_deref(),
            Some("catalog/raw/a/b.png")
        );
        assert_eq!(storage.uri("a.png"), "s3://bkt/catalog/raw/a.png");
        assert!(storage.bucket_key("../other/a.png").is_err());
        let long = "k".repeat(MAX_KEY_BYTES);
        assert!(storage.bucket_key(&long).is_err());
        assert_eq!(storage.relative("catalog/raw/a/b.png"), Some("a/b.png"));
        assert_eq!(storage.relative("catalog/rawx/a.png"), None);
    }

    #[test]
    fn endpoints_must_be_http_urls_and_secrets_stay_hidden() {
        let config = ObjectStorageConfig {
            bucket: "bkt".into(),
            prefix: String::new(),
            endpoint: Some("ftp://127.0.0.1:9".into()),
            region: None,
            access: Access::S3(Credentials::new("id", "hunter2-secret")),
        };
        let err = ObjectStorage::new(&config).expect_err("ftp endpoint");
        assert_eq!(err.code(), "object-storage-config");
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn credentials_files_name_the_file_and_never_the_secret() {
        let dir = tempfile::tempdir().expect("temp dir");
        let good = dir.path().join("good.yaml");
        std::fs::write(
            &good,
            "access_key_id: AKIDEXAMPLE\nsecret_access_key: hunter2-secret\n",
        )
        .expect("write");
        let creds = Credentials::from_file(&good).expect("parses");
        assert_eq!(creds, Credentials::new("AKIDEXAMPLE", "hunter2-secret"));
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, "access_key_id: x\nsecret: hunter2-secret\n").expect("write");
        let err = Credentials::from_file(&bad)
            .expect_err("unknown key")
            .to_string();
        assert!(
            err.contains("bad.yaml") && !err.contains("hunter2"),
            "{err}"
        );
        let missing = Credentials::from_file(&dir.path().join("none.yaml"))
            .expect_err("missing")
            .to_string();
        assert!(missing.contains("ENOENT"), "{missing}");
    }

    /// A byte-order mark is read past; the AWS CLI's INI file is named as such (it was told
    /// "both keys take a string value"); a FIFO is refused at once (the open blocked `validate`
    /// and the start until something wrote into it). None of them echoes the secret.
    #[test]
    fn credentials_files_saved_oddly_are_read_or_named_precisely() {
        let dir = tempfile::tempdir().expect("temp dir");
        let bom = dir.path().join("bom.yaml");
        std::fs::write(
            &bom,
            "\u{feff}access_key_id: AKIDEXAMPLE\nsecret_access_key: hunter2-secret\n",
        )
        .expect("write");
        assert_eq!(
            Credentials::from_file(&bom).expect("parses"),
            Credentials::new("AKIDEXAMPLE", "hunter2-secret")
        );
        let ini = dir.path().join("credentials");
        std::fs::write(
            &ini,
            "[default]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = hunter2-secret\n",
        )
        .expect("write");
        let err = Credentials::from_file(&ini).expect_err("ini").to_string();
        assert!(err.contains("AWS CLI") && !err.contains("hunter2"), "{err}");
        let fifo = dir.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .expect("mkfifo")
                .success()
        );
        let err = Credentials::from_file(&fifo).expect_err("fifo").to_string();
        assert!(err.contains("FIFO"), "{err}");
    }

    /// A key given twice, a control character, a shell environment file: each named by its
    /// line or its kind (they were told "line 1: not a YAML map", or "both keys take a string
    /// value"), never by what it holds.
    #[test]
    fn a_malformed_credentials_file_is_told_at_its_line_without_the_secret() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("creds.yaml");
        for (text, told) in [
            (
                "access_key_id: ak\nsecret_access_key: hunter2\nsecret_access_key: hunter3\n",
                "line 3: `secret_access_key` is given a second time",
            ),
            (
                "access_key_id: ak\nsecret_access_key: hun\u{1}ter2\n",
                "line 2: a control character",
            ),
            (
                "AWS_ACCESS_KEY_ID=ak\nAWS_SECRET_ACCESS_KEY=hunter2\n",
                "shell environment file",
            ),
            (
                "export AWS_ACCESS_KEY_ID=ak\nexport AWS_SECRET_ACCESS_KEY=hunter2\n",
                "shell environment file",
            ),
            // A line within the file (the parser names the one after the last at its end),
            // and a second document told as one.
            (
                "access_key_id: ak\nsecret_access_key: [hunter2]\n",
                "line 2:",
            ),
            (
                "access_key_id: ak\nsecret_access_key: hunter2\n---\nsession_token: t\n",
                "a second document",
            ),
        ] {
            std::fs::write(&path, text).expect("write");
            let err = Credentials::from_file(&path).expect_err(text).to_string();
            assert!(err.contains(told), "{text:?}: {err}");
            assert!(
                !err.contains("hunter") && !err.contains("hun\u{1}"),
                "{err}"
            );
        }
        std::fs::write(&path, "access_key_id: ak\nsecret_access_key: a=b/c+d\n").expect("write");
        assert_eq!(
            Credentials::from_file(&path).expect("a secret with = in it"),
            Credentials::new("ak", "a=b/c+d")
        );
    }
}
