//! The daemon's `storages` (issue 15): each entry ties a Claid storage connector (`claid_name`)
//! to the daemon's own access to the same bucket and prefix, so `storage://NAME/…` inputs and
//! outputs can be passed to Claid and the objects Claid writes can be checked (HEAD) without
//! downloading them.
//!
//! [`Storages::open`] reads each entry's credentials (its `credentials_file`, else the `AWS_*`
//! variables) and builds its client without a request; [`Storages::check`] makes the checks of
//! `validate` and of the daemon's start: the connector exists on Claid's side (`GET
//! /v1/storage/storages`) with the storage's bucket and path, and the daemon can list the prefix. Every [`StorageError`] names the
//! storage key, the connector or bucket and the cause, never a secret, and knows its exit code.

use std::collections::BTreeMap;

use crate::claid::wire::{StorageOut, StorageType};
use crate::claid::{ClaidError, Client};
use crate::config::StorageEntry;
use crate::exit;
use crate::objects::{
    Access, Credentials, GcsKey, ObjectError, ObjectStorage, ObjectStorageConfig, Provider,
};
use crate::pipeline::health::Refusal;
use crate::text::escape;

/// One configured storage, opened.
#[derive(Debug, Clone)]
pub struct OpenStorage {
    /// The key under `storages` (the NAME manifests use).
    pub name: String,
    pub entry: StorageEntry,
    /// The daemon's access to the bucket and prefix.
    pub objects: ObjectStorage,
    /// What the client was built from (the embedded emulator's connectors use it too).
    config: ObjectStorageConfig,
}

impl OpenStorage {
    /// Compares the storage with Claid's connectors (`GET /v1/storage/storages`): its
    /// connector must be there, a bucket, and point at the storage's bucket and path.
    pub fn compare(&self, connectors: &[StorageOut]) -> Result<(), StorageError> {
        let Some(connector) = connectors.iter().find(|c| c.name == self.entry.claid_name) else {
            return Err(StorageError::NoConnector {
                storage: self.name.clone(),
                connector: self.entry.claid_name.clone(),
                bucket: self.entry.url(),
                known: connectors.iter().map(|c| c.name.clone()).collect(),
            });
        };
        // The bucket and path Claid reports (when it does) must be the storage's.
        let params = &connector.parameters;
        let bucket = params.bucket.as_deref().unwrap_or(&self.entry.bucket);
        // A connector reported with its bucket and no path has Claid's default path, none;
        // one reported without either says nothing to compare.
        let path = match (params.bucket.as_deref(), params.path.as_deref()) {
            (_, Some(path)) => path.trim_matches('/'),
            (Some(_), None) => "",
            (None, None) => &self.entry.prefix,
        };
        // So must its type: an s3 connector reads another bucket than a gs:// one, and a web
        // folder is no bucket at all.
        let provider = match &connector.kind {
            StorageType::S3 => Provider::S3,
            StorageType::Gcs => Provider::Gcs,
            other => {
                return Err(StorageError::NotABucket {
                    storage: self.name.clone(),
                    connector: self.entry.claid_name.clone(),
                    kind: match other {
                        StorageType::Other(kind) => escape(kind).to_string(),
                        _ => "web_folder".to_owned(),
                    },
                });
            }
        };
        let scheme = provider.scheme();
        if bucket != self.entry.bucket
            || path != self.entry.prefix
            || provider != self.entry.provider
        {
            return Err(StorageError::Mismatch {
                storage: self.name.clone(),
                connector: self.entry.claid_name.clone(),
                claid: if path.is_empty() {
                    format!("{scheme}://{bucket}")
                } else {
                    format!("{scheme}://{bucket}/{path}")
                },
                ours: self.entry.url(),
            });
        }
        Ok(())
    }

    /// The daemon's access to another bucket and prefix (`url`, `s3://bucket/prefix`) of the
    /// same kind, endpoint and keys: where the storage pointed when a job was submitted
    /// ([`crate::store::records::JobV1::submitted_to`]), its `url` changed since. `None` for a
    /// URL of another kind, or one that cannot be used.
    pub fn former(&self, url: &str) -> Option<ObjectStorage> {
        let former = crate::objects::S3Url::parse(url).ok()?;
        if former.provider != self.entry.provider {
            return None;
        }
        ObjectStorage::new(&ObjectStorageConfig {
            bucket: former.bucket,
            prefix: former.prefix,
            ..self.config.clone()
        })
        .ok()
    }
}

/// Every configured storage, by name. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Storages {
    by_name: BTreeMap<String, OpenStorage>,
    /// The comparisons of connectors with their storages during the run
    /// ([`Storages::recheck`]), one at a time.
    rechecks: std::sync::Arc<tokio::sync::Mutex<Rechecks>>,
    /// Connector names of earlier runs renamed since (old name → the storage's name), found
    /// at the start ([`Storages::renamed_since`]): the objects Claid wrote under the old
    /// name are the storage's.
    renamed: BTreeMap<String, String>,
}

/// What [`Storages::recheck`] knows, by storage name.
#[derive(Debug, Default)]
struct Rechecks {
    /// The last comparison Claid answered.
    answered: BTreeMap<String, Rechecked>,
    /// When a listing last went unanswered.
    unanswered: BTreeMap<String, std::time::Instant>,
}

/// A storage's connector found pointing elsewhere than the storage ([`Storages::recheck`]).
#[derive(Debug, Clone)]
pub struct ConnectorMoved {
    /// Why, in words (the start check's error).
    pub why: String,
    /// Where it points now (`s3://bucket/path`), when it points at another place of a bucket
    /// (not when it is gone or no bucket).
    pub place: Option<String>,
}

/// How long a storage's connector is not listed again after Claid did not answer.
const RECHECK_UNANSWERED_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// A storage's connector compared with it during the run.
#[derive(Debug, Clone)]
struct Rechecked {
    /// When the listing was sent.
    at: std::time::Instant,
    /// What was found (`None`: it matches).
    moved: Option<ConnectorMoved>,
}

/// The waits between the listings of one [`Storages::recheck`] that Claid does not answer.
const RECHECK_RETRIES: [std::time::Duration; 4] = [
    std::time::Duration::from_secs(1),
    std::time::Duration::from_secs(2),
    std::time::Duration::from_secs(4),
    std::time::Duration::from_secs(8),
];

/// Why a storage cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("`storages.{storage}`: {cause}")]
    Credentials {
        storage: String,
        cause: Box<ObjectError>,
    },
    #[error("`storages.{storage}`: {cause}")]
    Setup {
        storage: String,
        cause: Box<ObjectError>,
    },
    #[error(
        "`storages.{storage}`: Claid has no storage connector named \"{}\" (it has: {}); create it in Claid's dashboard (or POST /v1/storage/storages) for the bucket {bucket}, or fix `storages.{storage}.claid_name`",
        escape(connector),
        if known.is_empty() { "none".to_owned() } else { known.iter().map(|n| escape(n)).collect::<Vec<_>>().join(", ") }
    )]
    NoConnector {
        storage: String,
        connector: String,
        bucket: String,
        known: Vec<String>,
    },
    #[error(
        "`storages.{storage}`: Claid's connector \"{}\" points at {claid}, the storage at {ours}; outputs would be written where the daemon does not look: make `storages.{storage}.url` the connector's bucket and path",
        escape(connector)
    )]
    Mismatch {
        storage: String,
        connector: String,
        /// `s3://bucket/path` as Claid reports the connector.
        claid: String,
        /// `storages.NAME.url`.
        ours: String,
    },
    #[error(
        "`storages.{storage}`: Claid's connector \"{}\" is of type {kind}, not a bucket the daemon can check (s3 or gcs); connect the bucket to Claid as an s3 (or gcs) storage and name that connector in `storages.{storage}.claid_name`",
        escape(connector)
    )]
    NotABucket {
        storage: String,
        connector: String,
        kind: String,
    },
    #[error(
        "`storages.{storage}`: cannot list Claid's storage connectors (GET {url}) to find \"{}\": {cause}",
        escape(connector)
    )]
    Api {
        storage: String,
        connector: String,
        /// The listing's URL, credentials redacted.
        url: String,
        cause: Box<ClaidError>,
    },
    #[error(
        "`storages.{storage}` (connector \"{}\"): the daemon's own access fails: {cause}",
        escape(connector)
    )]
    Bucket {
        storage: String,
        connector: String,
        url: String,
        cause: Box<ObjectError>,
        regions: Box<Regions>,
    },
}

/// The regions a refused listing of a bucket is told with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Regions {
    /// The bucket's region as S3 names it in `x-amz-bucket-region`, looked up when the
    /// listing was refused as signed for the wrong region without naming the right one.
    pub found: Option<String>,
    /// The storage's own `region` (S3's default `us-east-1` when it sets none).
    pub configured: String,
}

impl StorageError {
    /// The row of the README's exit-code table: 64 what was configured is wrong (a missing
    /// connector, bucket or credentials), 69 a service did not answer, 77 access was refused.
    pub fn exit_code(&self) -> i32 {
        match self {
            StorageError::Credentials { cause, .. } => match cause.as_ref() {
                ObjectError::CredentialsFile { cause, .. } if cause.starts_with("EACCES") => {
                    exit::NO_PERM
                }
                _ => exit::USAGE,
            },
            StorageError::Setup { .. }
            | StorageError::NoConnector { .. }
            | StorageError::Mismatch { .. }
            | StorageError::NotABucket { .. } => exit::USAGE,
            StorageError::Api { cause, .. } => match cause.as_ref() {
                ClaidError::Account { .. } => exit::NO_PERM,
                // No such endpoint at `api.base_url` (404, 405): what was configured is wrong,
                // not an API away. (Other 4xx are waited out: a proxy in front answers 421 or
                // 409 for a moment while it rolls out, and 64 is not restarted by systemd.)
                ClaidError::Config { .. }
                | ClaidError::Rejected {
                    status: 404 | 405, ..
                } => exit::USAGE,
                _ => exit::UNAVAILABLE,
            },
            StorageError::Bucket { cause, .. } => match cause.as_ref() {
                ObjectError::Denied { .. } => exit::NO_PERM,
                ObjectError::NotFound { .. }
                | ObjectError::UnsafeKey { .. }
                | ObjectError::Url { .. }
                | ObjectError::Setup { .. } => exit::USAGE,
                ObjectError::Request { cause, .. }
                    if looks_like_no_bucket(cause)
                        || looks_like_wrong_region(cause)
                        || not_an_s3_answer(cause) =>
                {
                    exit::USAGE
                }
                _ => exit::UNAVAILABLE,
            },
        }
    }

    /// Claid's API or the bucket's endpoint could not be asked because no TLS handshake with
    /// it succeeds: an `EX_UNAVAILABLE` that no retry mends ([`ClaidError::Tls`],
    /// [`crate::claid::is_tls_refusal`]).
    pub fn tls_refused(&self) -> bool {
        match self {
            StorageError::Api { cause, .. } => matches!(cause.as_ref(), ClaidError::Tls { .. }),
            StorageError::Bucket { cause, .. } => matches!(
                cause.as_ref(),
                ObjectError::Request { cause, .. } if crate::claid::is_tls_refusal(cause)
            ),
            _ => false,
        }
    }

    /// What to do about it, when there is something to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            StorageError::Bucket { cause, regions, .. } => Some(match cause.as_ref() {
                ObjectError::Request { cause, .. } if looks_like_wrong_region(cause) => match expected_region(cause).or(regions.found.as_deref()) {
                    // The region is right: the endpoint is another region's.
                    Some(region) if region == regions.configured => format!("the bucket is in `{region}`, as the storage's `region` says: its `endpoint` is another region's; correct the `endpoint` (or remove it, for Amazon S3)"),
                    Some(region) => format!("S3 says the bucket is in another region than the storage's `region`: set `region: {region}` (or correct the `endpoint`)"),
                    // A 301 without a body to read names no region.
                    None => "S3 says the bucket is in another region than the storage's `region`, without naming it: `aws s3api get-bucket-location --bucket BUCKET` tells it; set `region` to it (or correct the `endpoint`)".to_owned(),
                },
                ObjectError::Request { cause, .. } if crate::claid::is_tls_refusal(cause) => {
                    if cause.contains("InvalidContentType") {
                        "no TLS handshake with the storage's `endpoint` succeeds: it does not answer in TLS (it may speak plain HTTP: is the endpoint meant to be http://?)".to_owned()
                    } else {
                        "no TLS handshake with the storage's `endpoint` succeeds (its certificate, or its TLS, is refused): correct the `endpoint`, or the server's certificate".to_owned()
                    }
                }
                ObjectError::Denied { .. } => "S3 refused the daemon's keys: check `access_key_id` and `secret_access_key` in the storage's credentials file (or the AWS_* variables), and that they may list, read, write and delete under the prefix".to_owned(),
                ObjectError::Request { cause, .. } if not_an_s3_answer(cause) => "the endpoint answers 404 to the bucket's listing without S3's `NoSuchBucket`: it is not an S3 API (another service, or a path after the host); give the storage's `endpoint` as the S3 API's address, `http(s)://HOST:PORT`".to_owned(),
                // A server that answers, but is busy: reachable, and nothing to correct.
                ObjectError::Request { cause, .. } if answered_busy(cause) =>
                {
                    "the bucket's server answers that it is busy (a 5xx or 429, such as S3's 503 SlowDown): it is reachable and throttles or fails requests for now; try again later (the daemon's start waits it out up to `api.unreachable_timeout`)".to_owned()
                }
                ObjectError::Request { cause, .. } if looks_like_no_bucket(cause) => {
                    "the bucket does not exist at the storage's endpoint (NoSuchBucket): check the bucket name in the storage's `url` (and its `endpoint`), or create the bucket".to_owned()
                }
                // A listing answered 404: no such bucket.
                ObjectError::NotFound { op: "list", .. } => {
                    "the bucket does not exist at the storage's endpoint (NoSuchBucket): check the bucket name in the storage's `url` (and its `endpoint`), or create the bucket".to_owned()
                }
                _ if self.exit_code() == exit::USAGE => "check the bucket name and the `endpoint` of the storage".to_owned(),
                _ => "check that the S3 endpoint is reachable from this machine".to_owned(),
            }),
            StorageError::Api { cause, .. } => match cause.as_ref() {
                ClaidError::Account {
                    status: status @ (401 | 402),
                    ..
                } => Some(Refusal::Status(*status).fix().to_owned()),
                ClaidError::Account { status: 403, .. } => Some(
                    "the API key needs the `storage` permission to list connectors".to_owned(),
                ),
                ClaidError::Rejected {
                    status: 404 | 405, ..
                } => Some(
                    "the API has no such endpoint at that address: `api.base_url` must be Claid's API root with its version, e.g. `https://api.claid.ai/v1` (a proxy in front of it must pass `/storage/storages` through)".to_owned(),
                ),
                _ => None,
            },
            _ => None,
        }
    }
}

/// S3's answers to a request signed for another region than the bucket's (a wrong `region`):
/// `AuthorizationHeaderMalformed` ("the region 'us-east-1' is wrong; expecting
/// 'eu-central-1'"), a `301 PermanentRedirect` to the bucket's own endpoint, which object_store
/// reports as a redirect without a location. No retry heals them.
fn looks_like_wrong_region(cause: &str) -> bool {
    [
        "AuthorizationHeaderMalformed",
        "PermanentRedirect",
        "IllegalLocationConstraint",
        "incorrectly configured region",
        "301 Moved Permanently",
    ]
    .iter()
    .any(|sign| cause.contains(sign))
}

/// The region S3 names in its answer to a request signed for another one
/// (`AuthorizationHeaderMalformed`: "… is wrong; expecting 'eu-west-3'"), if it does.
fn expected_region(cause: &str) -> Option<&str> {
    let rest = &cause[cause.find("expecting '")? + "expecting '".len()..];
    let region = &rest[..rest.find('\'')?];
    crate::objects::is_region_name(region).then_some(region)
}

/// An answer of a server that is busy or failing for now: a 5xx or 429 status as object_store
/// words it (`status code: 503 Service Unavailable`), or S3's `SlowDown` (not a number that
/// happens to be in the URL).
fn answered_busy(cause: &str) -> bool {
    cause.contains("SlowDown")
        || cause.match_indices("status code: ").any(|(at, found)| {
            let status = &cause[at + found.len()..];
            status.starts_with('5') || status.starts_with("429")
        })
}

/// S3 answers a listing of a bucket that does not exist with `NoSuchBucket`.
fn looks_like_no_bucket(cause: &str) -> bool {
    cause.contains("NoSuchBucket") || cause.contains("does not exist")
}

/// A 404 to the listing of a bucket that is not S3's "no such bucket": the endpoint answers,
/// and is not an S3 API (another service's port, a path after the host). What was configured
/// is wrong; retrying does not mend it (it was waited out as an outage, and systemd restarted
/// the daemon every 5 s).
fn not_an_s3_answer(cause: &str) -> bool {
    cause.contains("404 Not Found") && !looks_like_no_bucket(cause)
}

/// Warns when storage `name`'s credentials file may be read or replaced by every user of the
/// machine (its "other" bits): its secret key should be readable by the daemon's user or group only
/// (`0600`, or `0640` with the daemon's group, as docs/storage.md installs it).
fn warn_if_exposed(name: &str, path: &std::path::Path) {
    if let Some(why) = exposure(path) {
        tracing::warn!(
            storage = %crate::text::Escaped::str(name),
            file = %crate::text::Escaped::path(path),
            "{why}"
        );
    }
}

/// What [`warn_if_exposed`] says about a credentials file, if anything.
fn exposure(path: &std::path::Path) -> Option<String> {
    crate::config::exposure(path, "the storage's credentials file", "the secret key")
}

/// The warnings the start logs about the storages' credentials files, for `validate` to print
/// (storage name, file, what to do).
pub fn credential_warnings(entries: &BTreeMap<String, StorageEntry>) -> Vec<String> {
    entries
        .iter()
        .filter_map(|(name, entry)| {
            let path = entry.credentials_file.as_deref()?;
            let why = exposure(path)?;
            Some(format!(
                "storage `{}`, {}: {why}",
                crate::text::Escaped::str(name),
                crate::text::Escaped::path(path)
            ))
        })
        .collect()
}

impl Storages {
    /// Reads each entry's credentials and builds its client (no request is made).
    pub fn open(entries: &BTreeMap<String, StorageEntry>) -> Result<Storages, StorageError> {
        let mut by_name = BTreeMap::new();
        for (name, entry) in entries {
            if let Some(path) = &entry.credentials_file {
                warn_if_exposed(name, path);
            }
            let access = match (entry.provider, &entry.credentials_file) {
                (Provider::S3, Some(path)) => Credentials::from_file(path).map(Access::S3),
                (Provider::S3, None) => Credentials::from_env().map(Access::S3),
                (Provider::Gcs, Some(path)) => GcsKey::from_file(path).map(Access::Gcs),
                (Provider::Gcs, None) => GcsKey::from_env().map(Access::Gcs),
            }
            .map_err(|cause| StorageError::Credentials {
                storage: name.clone(),
                cause: Box::new(cause),
            })?;
            let config = ObjectStorageConfig {
                bucket: entry.bucket.clone(),
                prefix: entry.prefix.clone(),
                endpoint: entry.endpoint.clone(),
                region: Some(entry.region.clone()),
                access,
            };
            let objects = ObjectStorage::new(&config).map_err(|cause| StorageError::Setup {
                storage: name.clone(),
                cause: Box::new(cause),
            })?;
            by_name.insert(
                name.clone(),
                OpenStorage {
                    name: name.clone(),
                    entry: entry.clone(),
                    objects,
                    config,
                },
            );
        }
        Ok(Storages {
            by_name,
            rechecks: Default::default(),
            renamed: BTreeMap::new(),
        })
    }

    /// Compares `storage` with its connector at Claid again, during a run (an object Claid
    /// was to write is not at its key, as a look sent at `looked_at` found): `Some(why)` when
    /// the connector points elsewhere now (or is gone, or no bucket), and where. A listing sent after
    /// that look answers for every caller that looked before it was sent (callers meanwhile
    /// wait for it): one listing serves the images found missing together, and none made
    /// before the look stands for it (the connector may have moved since). A listing Claid
    /// does not answer is sent again a few times (15 s in all); `None` also when it never is
    /// (the object counts as missing, as before the comparison existed).
    pub async fn recheck(
        &self,
        storage: &OpenStorage,
        client: &Client,
        looked_at: std::time::Instant,
    ) -> Option<ConnectorMoved> {
        let mut rechecks = self.rechecks.lock().await;
        if let Some(last) = rechecks.answered.get(&storage.name)
            && last.at >= looked_at
        {
            return last.moved.clone();
        }
        // Claid did not answer the last listing: not asked again for a minute (each image
        // found missing meanwhile waited 15 s for its own listings, one after another).
        if let Some(at) = rechecks.unanswered.get(&storage.name)
            && at.elapsed() < RECHECK_UNANSWERED_FOR
        {
            return None;
        }
        let mut waits = RECHECK_RETRIES.iter();
        let (at, connectors) = loop {
            let at = std::time::Instant::now();
            match client.list_storages_once().await {
                Ok(connectors) => break (at, connectors),
                Err(err) => match waits.next() {
                    Some(wait) => {
                        tracing::debug!(storage = %escape(&storage.name), error = %err, "Claid's storage connectors could not be listed to compare one with its storage; asking again");
                        tokio::time::sleep(*wait).await;
                    }
                    None => {
                        tracing::warn!(storage = %escape(&storage.name), error = %err, "Claid's storage connectors could not be listed to see whether the storage's connector still points at its `url`; the output object counts as missing (not asked again for a minute)");
                        rechecks
                            .unanswered
                            .insert(storage.name.clone(), std::time::Instant::now());
                        return None;
                    }
                },
            }
        };
        let moved = storage
            .compare(&connectors)
            .err()
            .map(|err| ConnectorMoved {
                place: match &err {
                    StorageError::Mismatch { claid, .. } => Some(claid.clone()),
                    _ => None,
                },
                why: err.to_string(),
            });
        rechecks.answered.insert(
            storage.name.clone(),
            Rechecked {
                at,
                moved: moved.clone(),
            },
        );
        moved
    }

    /// No storage configured.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The storage configured under `name`.
    pub fn get(&self, name: &str) -> Option<&OpenStorage> {
        self.by_name.get(name)
    }

    /// The storage whose Claid connector is `claid_name`.
    pub fn by_connector(&self, claid_name: &str) -> Option<&OpenStorage> {
        self.by_name
            .values()
            .find(|storage| storage.entry.claid_name == claid_name)
            .or_else(|| self.by_name.get(self.renamed.get(claid_name)?))
    }

    /// The storage of an object `storage://CONNECTOR/…` Claid wrote for a job submitted while
    /// its storage pointed at `submitted_to` (the storage's `url` then): the storage with that
    /// `url` when the connector's name belongs to a storage elsewhere now (connector names
    /// swapped between storages since), else [`Storages::by_connector`].
    pub fn for_object(&self, claid_name: &str, submitted_to: Option<&str>) -> Option<&OpenStorage> {
        let named = self.by_connector(claid_name);
        match submitted_to {
            Some(url) if named.is_some_and(|storage| storage.entry.url() != url) => self
                .by_name
                .values()
                .find(|storage| storage.entry.url() == url)
                .or(named),
            _ => named,
        }
    }

    /// The connectors whose jobs are to name another connector now (`noted`: connector name →
    /// the storage's name and `url`, as an earlier start saw them): the storage they belonged
    /// to, with the same `url`, has another `claid_name` now, whatever the old name is now
    /// (another storage's, after names were swapped between storages). Old name → new name.
    /// For rewriting the jobs not sent yet at a start, made before it.
    pub fn rewrites_since(
        &self,
        noted: &BTreeMap<String, (String, String)>,
    ) -> BTreeMap<String, String> {
        noted
            .iter()
            .filter_map(|(old, (name, url))| {
                let storage = self.by_name.get(name)?;
                (storage.entry.url() == *url && storage.entry.claid_name != *old)
                    .then(|| (old.clone(), storage.entry.claid_name.clone()))
            })
            .collect()
    }

    /// The connectors renamed since they were noted (`noted`: connector name → the storage's
    /// name and `url`, as an earlier start saw them): a storage of the config, with the same
    /// `url`, now has another `claid_name`, and neither a storage nor Claid (`at_claid`, the
    /// connector names Claid has now) has the old one. (A storage name given to another
    /// bucket since is no rename: the old connector is held as one taken out; nor is an old
    /// name Claid still has, another connector's now.) Old name → new name.
    pub fn renamed_since(
        &self,
        noted: &BTreeMap<String, (String, String)>,
        at_claid: &[String],
    ) -> BTreeMap<String, String> {
        let mut renamed = self.rewrites_since(noted);
        renamed.retain(|old, _| {
            !at_claid.contains(old) && !self.by_name.values().any(|s| &s.entry.claid_name == old)
        });
        renamed
    }

    /// Takes objects named by the old connector names of `renamed` (old → new, from
    /// [`Storages::renamed_since`]) as the renamed storages' own.
    pub fn follow_renames(&mut self, renamed: &BTreeMap<String, String>) {
        for (old, new) in renamed {
            if let Some(storage) = self.by_connector(new) {
                let name = storage.name.clone();
                self.renamed.insert(old.clone(), name);
            }
        }
    }

    /// Each connector name of the config, with its storage's name and `url`.
    pub fn connectors(&self) -> BTreeMap<String, (String, String)> {
        self.by_name
            .values()
            .map(|storage| {
                let of = (storage.name.clone(), storage.entry.url());
                (storage.entry.claid_name.clone(), of)
            })
            .collect()
    }

    /// The config entries, by name.
    pub fn entries(&self) -> BTreeMap<String, StorageEntry> {
        self.by_name
            .iter()
            .map(|(name, storage)| (name.clone(), storage.entry.clone()))
            .collect()
    }

    /// Every storage, by name.
    pub fn iter(&self) -> impl Iterator<Item = &OpenStorage> {
        self.by_name.values()
    }

    /// The connectors the embedded emulator serves: the config's own storages, each under its
    /// `claid_name`, with the same bucket, endpoint and keys.
    pub fn emulator_connectors(&self) -> Vec<crate::emulator::StorageConnector> {
        self.by_name
            .values()
            .map(|storage| crate::emulator::StorageConnector {
                name: storage.entry.claid_name.clone(),
                storage: storage.config.clone(),
            })
            .collect()
    }

    /// The checks of `validate` and of the daemon's start, storage by storage: the connector
    /// exists on Claid's side (one `GET /v1/storage/storages`, skipped when `client` is
    /// `None`), and the daemon can list the prefix. Stops at the first problem. Returns the
    /// connector names Claid has (none without `client`).
    pub async fn check(&self, client: Option<&Client>) -> Result<Vec<String>, StorageError> {
        let Some(first) = self.by_name.values().next() else {
            return Ok(Vec::new());
        };
        let mut names = Vec::new();
        if let Some(client) = client {
            let connectors =
                client
                    .list_storages_once()
                    .await
                    .map_err(|cause| StorageError::Api {
                        storage: first.name.clone(),
                        connector: first.entry.claid_name.clone(),
                        url: client.storages_url(),
                        cause: Box::new(cause),
                    })?;
            for storage in self.by_name.values() {
                storage.compare(&connectors)?;
            }
            names = connectors.into_iter().map(|c| c.name).collect();
        }
        for storage in self.by_name.values() {
            let Err(cause) = storage.objects.probe().await else {
                continue;
            };
            // A 301 says the region is wrong without saying which: S3 names it to a plain
            // `HEAD` of the bucket.
            let region = match &cause {
                ObjectError::Request { cause, .. }
                    if looks_like_wrong_region(cause) && expected_region(cause).is_none() =>
                {
                    storage.objects.bucket_region().await
                }
                _ => None,
            };
            return Err(StorageError::Bucket {
                storage: storage.name.clone(),
                connector: storage.entry.claid_name.clone(),
                url: storage.entry.url(),
                cause: Box::new(cause),
                regions: Box::new(Regions {
                    found: region,
                    configured: storage.entry.region.clone(),
                }),
            });
        }
        Ok(names)
    }
}

/// The `storage://CLAID_NAME/folder/` a request body's `output.destination` names (a storage
/// output), as validation left it.
pub fn destination_folder(body: &serde_json::Value) -> Option<&str> {
    body.get("output")?
        .get("destination")?
        .as_str()
        .filter(|uri| uri.starts_with("storage://"))
}

/// Where a job with a storage output writes: its outbox-relative path under the destination
/// folder, `storage://CLAID_NAME/folder/a/b/sku-1.jpg`; `None` for a local output.
pub fn destination_of(body: &serde_json::Value, output_rel: &str) -> Option<String> {
    let folder = destination_folder(body)?;
    // `storage://NAME/` (the storage's whole prefix) or `storage://NAME/out/`.
    let folder = folder.trim_end_matches('/');
    Some(format!("{folder}/{output_rel}"))
}

/// Where the output of a job (`body`, `output_rel`) whose result is `output` is checked, when
/// Claid writes it into a storage: [`destination_of`], or the object Claid reports writing
/// ([`reported_object`]). `None` for an output downloaded into the outbox.
pub fn output_object(
    body: &serde_json::Value,
    output_rel: &str,
    output: &crate::claid::wire::ImageObject,
) -> Option<String> {
    destination_of(body, output_rel).map(|expected| {
        let reported = output
            .claid_storage_uri
            .clone()
            .or_else(|| written_in_folder(&expected, output));
        reported_object(&expected, reported.as_deref())
    })
}

/// The `storage://` URI of the object Claid says it wrote when it names it only by its key in
/// the bucket (`object_key`, or the key of `object_uri`): the expected folder with the name
/// written, when the key ends with that folder and name (the connector's path comes before
/// them). `None` when it names no key, or one elsewhere.
fn written_in_folder(expected: &str, output: &crate::claid::wire::ImageObject) -> Option<String> {
    let (connector, key) = split_uri(expected)?;
    let folder = key.rsplit_once('/').map_or("", |(folder, _)| folder);
    let written = output
        .bucket_key()
        .or_else(|| {
            let (_, rest) = output.object_uri.as_deref()?.split_once("://")?;
            Some(rest.split_once('/')?.1)
        })?
        .trim_start_matches('/');
    let name = written.rsplit_once('/').map_or(written, |(_, name)| name);
    let tail = if folder.is_empty() {
        name.to_owned()
    } else {
        format!("{folder}/{name}")
    };
    (written == tail || written.ends_with(&format!("/{tail}")))
        .then(|| format!("storage://{connector}/{tail}"))
}

/// The object a storage output is checked at: the one Claid reports writing
/// (`claid_storage_uri`) when it is the expected one but for the extension (Claid may write
/// `sku-1.jpeg`, or keep the input's `.png`, where the daemon expects `sku-1.jpg`): same
/// connector, same folder, same stem, a plain name. Anything else (none reported, another
/// folder or name) is the expected object, so a hostile or broken answer never points the
/// check outside the destination.
pub fn reported_object(expected: &str, reported: Option<&str>) -> String {
    fn parts(uri: &str) -> Option<(&str, &str, &str)> {
        let (connector, key) = split_uri(uri)?;
        let (folder, name) = key.rsplit_once('/').unwrap_or(("", key));
        let stem = name.rsplit_once('.').map_or(name, |(stem, _)| stem);
        Some((connector, folder, stem))
    }
    let Some(reported) = reported.map(str::trim) else {
        return expected.to_owned();
    };
    let plain = !reported.contains("..")
        && !reported.contains(['?', '#', '\\'])
        && !reported.chars().any(char::is_control);
    match (parts(expected), parts(reported)) {
        (Some(want), Some(got)) if plain && want == got && !got.2.is_empty() => reported.to_owned(),
        _ => expected.to_owned(),
    }
}

/// Splits `storage://NAME/key` into its connector name and key.
pub fn split_uri(uri: &str) -> Option<(&str, &str)> {
    uri.strip_prefix("storage://")?.split_once('/')
}

/// `api.staging`: the storage local inputs are staged into, and which staged objects are being
/// staged or deleted right now. Cheap to clone.
///
/// A staged object is shared by every job with the same content (its key is the content's
/// sha256). A staging holds a [`StagingGuard`] from before its HEAD until the job has recorded
/// the object (`Store::mark_staged`); a cleanup skips keys held that way and marks the keys it
/// deletes, and a staging of a marked key waits for the deletion to end and uploads again. So
/// a cleanup never deletes an object that a job recorded or is about to record.
#[derive(Debug, Clone)]
pub struct Staging {
    pub storage: OpenStorage,
    /// `api.staging_delete`.
    pub delete: bool,
    /// The daemon's store id, which names its part of the staging prefix ([`Staging::key`]).
    owner: String,
    users: std::sync::Arc<std::sync::Mutex<BTreeMap<String, Use>>>,
    released: std::sync::Arc<tokio::sync::Notify>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    /// A staging holds the key (one at a time: see [`Staging::hold`]).
    Staging,
    /// A cleanup is deleting it.
    Deleting,
}

/// Holds a staged key for a staging until the job recorded it.
#[derive(Debug)]
pub struct StagingGuard {
    key: String,
    users: std::sync::Arc<std::sync::Mutex<BTreeMap<String, Use>>>,
    released: std::sync::Arc<tokio::sync::Notify>,
}

impl Drop for StagingGuard {
    fn drop(&mut self) {
        let mut users = self
            .users
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        users.remove(&self.key);
        drop(users);
        // Another staging of the same object waits for this one (see `Staging::hold`).
        self.released.notify_waiters();
    }
}

/// Image file extensions kept on staged objects (Claid reads the type from the bytes, but a
/// batch output is named after the input).
const STAGED_EXTENSIONS: &[&str] = &[
    "png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff", "avif", "heic",
];

impl Staging {
    pub fn new(storage: OpenStorage, delete: bool, owner: &str) -> Staging {
        Staging {
            owner: owner.to_owned(),
            storage,
            delete,
            users: Default::default(),
            released: Default::default(),
        }
    }

    /// `staging/<store id>/<sha256>.<ext>` (relative to the storage's prefix) for content `sha256` of the
    /// file `input` (its extension, lowercased, when it is an image's; else `img`): the same
    /// bytes are staged once, whatever their name.
    ///
    /// `named_as` (a job whose output Claid writes into a storage: its output's file stem):
    /// `staging/<store id>/<sha256>/<stem>.<ext>` when that name is plain (letters, digits, `.`, `_`, `-`),
    /// because a batch names each output after its input's file name: with the hash as the
    /// name, such jobs could only go alone.
    /// The name a local input of a job is staged under ([`Staging::key`]'s `named_as`): its
    /// output's stem when Claid writes the output into a storage, so that it can go in a
    /// batch (Claid names a batch's outputs after their inputs); else none (its hash).
    pub fn named_as<'a>(body: &serde_json::Value, output_rel: &'a str) -> Option<&'a str> {
        destination_of(body, output_rel)
            .and(std::path::Path::new(output_rel).file_stem())
            .and_then(|stem| stem.to_str())
    }

    pub fn key(&self, sha256: &str, input: &str, named_as: Option<&str>) -> String {
        Self::key_for(&self.owner, sha256, input, named_as)
    }

    /// [`Staging::key`] for the daemon whose store id is `owner`: under `staging/<owner>/`,
    /// so that two daemons staging into one bucket prefix never share an object (one's
    /// cleanup deleted objects the other had submitted and Claid had not read yet).
    pub fn key_for(owner: &str, sha256: &str, input: &str, named_as: Option<&str>) -> String {
        let ext = std::path::Path::new(input)
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .filter(|e| STAGED_EXTENSIONS.contains(&e.as_str()));
        let plain = |name: &str| {
            !name.is_empty()
                && !name.starts_with('.')
                && name.len() <= 128
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        };
        match (named_as, &ext) {
            (Some(stem), Some(ext)) if plain(stem) => {
                format!("staging/{owner}/{sha256}/{stem}.{ext}")
            }
            _ => format!(
                "staging/{owner}/{sha256}.{}",
                ext.as_deref().unwrap_or("img")
            ),
        }
    }

    /// `storage://CLAID_NAME/<key>`: what Claid reads.
    pub fn uri(&self, key: &str) -> String {
        format!("storage://{}/{key}", self.storage.entry.claid_name)
    }

    /// The key of a staged URI of this storage.
    pub fn key_of<'u>(&self, uri: &'u str) -> Option<&'u str> {
        let (connector, key) = split_uri(uri)?;
        (connector == self.storage.entry.claid_name).then_some(key)
    }

    /// Takes `key` for a staging; waits while a cleanup deletes it, or while another job
    /// stages it (the same file in several rows: it then finds the object there and uploads
    /// nothing, where each uploaded it).
    pub async fn hold(&self, key: &str) -> StagingGuard {
        loop {
            let released = self.released.notified();
            {
                let mut users = self
                    .users
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match users.get(key).copied() {
                    Some(Use::Deleting | Use::Staging) => {}
                    None => {
                        users.insert(key.to_owned(), Use::Staging);
                        return self.guard(key);
                    }
                }
            }
            released.await;
        }
    }

    fn guard(&self, key: &str) -> StagingGuard {
        StagingGuard {
            key: key.to_owned(),
            users: self.users.clone(),
            released: self.released.clone(),
        }
    }

    /// Uploads `bytes` to `key` unless an object of the same size is there (content-addressed:
    /// same key and size is the same content). `true` when it uploaded.
    pub async fn upload(&self, key: &str, bytes: bytes::Bytes) -> Result<bool, ObjectError> {
        match self.storage.objects.head(key).await {
            Ok(info) if info.size == bytes.len() as u64 => return Ok(false),
            Ok(_) | Err(ObjectError::NotFound { .. }) => {}
            Err(err) => return Err(err),
        }
        self.storage.objects.put(key, bytes).await?;
        Ok(true)
    }

    /// Deletes the staged objects `candidates` (URIs) that no job needs: neither held by a
    /// staging nor in `in_use()` (the unfinished jobs' staged objects, read after the keys
    /// are marked). Says how many it deleted, and whether every candidate was either deleted
    /// or still needed (not when one is being staged right now, the unfinished jobs could not
    /// be read, a delete failed, or one lies outside this staging storage: those objects stay,
    /// and the cleanup must be done again).
    pub async fn clean<F, Fut>(&self, candidates: Vec<String>, in_use: F) -> Cleaned
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Option<std::collections::HashSet<String>>>,
    {
        let mut marked = Vec::new();
        // An object a staging holds right now is left, and the cleanup is not complete: if
        // that staging fails before its job records the object, only a later cleanup that
        // finds no user deletes it.
        let mut complete = true;
        let mut cleaned = Cleaned::default();
        {
            let mut users = self
                .users
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for uri in candidates {
                // Staged while `api.staging` named another storage: left, and the cleanup
                // stays to be done (it was marked done, and the objects left for good, once
                // `api.staging` named their storage again; acceptance run).
                let Some(key) = self.key_of(&uri).map(str::to_owned) else {
                    cleaned.elsewhere += 1;
                    complete = false;
                    continue;
                };
                if users.contains_key(&key) {
                    complete = false;
                    continue;
                }
                users.insert(key.clone(), Use::Deleting);
                marked.push((uri, key));
            }
        }
        let mut deleted = 0;
        match in_use().await {
            Some(in_use) => {
                for (uri, key) in &marked {
                    if in_use.contains(uri) {
                        continue;
                    }
                    match self.storage.objects.delete(key).await {
                        Ok(()) => deleted += 1,
                        Err(err) => {
                            // The bucket refuses or is away: the rest waits for the next
                            // cleanup rather than each delete waiting out its retries.
                            complete = false;
                            cleaned.failed = true;
                            tracing::warn!(error = %err, "Cannot delete a staged object; the run's cleanup is done again at the next start");
                            break;
                        }
                    }
                }
            }
            // The unfinished jobs could not be read: nothing is deleted, and cleanups wait
            // as after a failed delete (told).
            None => {
                complete = false;
                cleaned.failed = true;
            }
        }
        {
            let mut users = self
                .users
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (_, key) in &marked {
                users.remove(key);
            }
        }
        self.released.notify_waiters();
        cleaned.deleted = deleted;
        cleaned.complete = complete;
        cleaned
    }
}

/// What [`Staging::clean`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cleaned {
    pub deleted: usize,
    /// Every candidate deleted or still needed: the run's cleanup mark may go.
    pub complete: bool,
    /// A delete failed (the bucket refuses or is away): cleanups wait a while.
    pub failed: bool,
    /// Candidates in another storage than this staging one (`api.staging` changed since).
    pub elsewhere: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The region S3 expects is named in the hint when its answer names it, and a 301 that
    /// names none is not said to (its hint tells how to find it).
    #[test]
    fn a_wrong_region_hint_names_the_region_only_when_s3_does() {
        assert_eq!(
            expected_region(
                "AuthorizationHeaderMalformed: the region 'us-east-1' is wrong; expecting 'eu-west-3'"
            ),
            Some("eu-west-3")
        );
        assert_eq!(
            expected_region(
                "Received redirect without LOCATION, this normally indicates an incorrectly configured region"
            ),
            None
        );
        assert_eq!(expected_region("expecting 'x; rm'"), None);
        let hint_with = |cause: &str, region: Option<&str>| {
            StorageError::Bucket {
                storage: "catalog".to_owned(),
                connector: "catalog-s3".to_owned(),
                url: "s3://b/p".to_owned(),
                cause: Box::new(ObjectError::Request {
                    op: "list",
                    uri: "s3://b/p".to_owned(),
                    cause: cause.to_owned(),
                }),
                regions: Box::new(Regions {
                    found: region.map(str::to_owned),
                    configured: "us-east-1".to_owned(),
                }),
            }
            .hint()
            .unwrap_or_default()
        };
        let hint = |cause: &str| hint_with(cause, None);
        assert!(hint("301 Moved Permanently").contains("get-bucket-location"));
        assert!(
            hint("AuthorizationHeaderMalformed … expecting 'eu-west-3'")
                .contains("`region: eu-west-3`")
        );
        // A region looked up in `x-amz-bucket-region`: named; when it is the storage's own,
        // the endpoint is what is wrong.
        assert!(
            hint_with("301 Moved Permanently", Some("eu-west-3")).contains("`region: eu-west-3`")
        );
        let same = hint_with("301 Moved Permanently", Some("us-east-1"));
        assert!(
            same.contains("correct the `endpoint`") && !same.contains("set `region"),
            "{same}"
        );
        // A throttling server is reachable: told as busy, not as one to check the reach of.
        let busy = hint("Server returned non-2xx status code: 503 Service Unavailable: SlowDown");
        assert!(
            busy.contains("busy") && !busy.contains("reachable from this machine"),
            "{busy}"
        );
        let missing = hint("Generic S3 error: Error performing list request: NoSuchBucket");
        assert!(missing.contains("does not exist"), "{missing}");
        // A number in the URL is no status.
        let away = hint("error sending request for url (http://127.0.0.1:15030/sale-2503)");
        assert!(away.contains("reachable from this machine"), "{away}");
    }

    /// A key Claid refuses while the start lists its connectors says which key and where it
    /// comes from; no credits and a missing permission say what to do too.
    #[test]
    fn an_account_refusal_at_the_start_check_names_the_fix() {
        let hint = |status: u16| {
            StorageError::Api {
                storage: "catalog".to_owned(),
                connector: "catalog-s3".to_owned(),
                url: "https://api.claid.ai/v1/storage/storages".to_owned(),
                cause: Box::new(ClaidError::Account {
                    endpoint: crate::claid::Endpoint::Probe,
                    status,
                    request_id: None,
                    error_code: String::new(),
                    error_message: "Authorization is required.".to_owned(),
                }),
            }
            .hint()
            .unwrap_or_default()
        };
        assert!(hint(401).contains("`api.api_key_file` (or CLAID_API_KEY)"));
        assert!(hint(402).contains("no credits left"));
        assert!(hint(403).contains("`storage` permission"));
    }

    /// Claid's own name for a storage output is checked when it differs only in the extension;
    /// another folder, another name, or no name keeps the expected object.
    #[test]
    fn an_object_named_only_by_its_key_in_the_bucket_is_checked_there() {
        use crate::claid::wire::ImageObject;
        let body = serde_json::json!({"output": {"destination": "storage://cat/out/"}});
        let output = |key: Option<&str>, uri: Option<&str>| ImageObject {
            ext: "jpeg".to_owned(),
            mps: 0.0,
            mime: "image/jpeg".to_owned(),
            format: "jpeg".to_owned(),
            width: 1,
            height: 1,
            tmp_url: None,
            object_key: key.map(str::to_owned),
            object_bucket: None,
            object_uri: uri.map(str::to_owned),
            claid_storage_uri: None,
            gcs_key: None,
            gcs_bucket: None,
        };
        let expected = Some("storage://cat/out/shoes/e1.jpg".to_owned());
        // Claid kept `.jpeg`: the object it wrote, under the connector's path `images`.
        assert_eq!(
            output_object(
                &body,
                "shoes/e1.jpg",
                &output(Some("images/out/shoes/e1.jpeg"), None)
            ),
            Some("storage://cat/out/shoes/e1.jpeg".to_owned())
        );
        assert_eq!(
            output_object(
                &body,
                "shoes/e1.jpg",
                &output(None, Some("s3://acme/images/out/shoes/e1.jpeg"))
            ),
            Some("storage://cat/out/shoes/e1.jpeg".to_owned())
        );
        // Elsewhere, another stem, nothing: the expected object.
        for other in [
            output(Some("images/elsewhere/e1.jpeg"), None),
            output(Some("images/out/shoes/e2.jpeg"), None),
            output(None, None),
        ] {
            assert_eq!(output_object(&body, "shoes/e1.jpg", &other), expected);
        }
    }

    #[test]
    fn the_object_claid_reports_is_checked_when_only_its_extension_differs() {
        let expected = "storage://cat-s3/out/shoes/sku-1.jpg";
        for (reported, checked) in [
            (None, expected),
            (
                Some("storage://cat-s3/out/shoes/sku-1.jpeg"),
                "storage://cat-s3/out/shoes/sku-1.jpeg",
            ),
            (
                Some("storage://cat-s3/out/shoes/sku-1.png"),
                "storage://cat-s3/out/shoes/sku-1.png",
            ),
            (Some("storage://cat-s3/out/shoes/sku-1.jpg"), expected),
            (Some("storage://cat-s3/out/other/sku-1.jpeg"), expected),
            (Some("storage://cat-s3/out/shoes/sku-2.jpeg"), expected),
            (Some("storage://other/out/shoes/sku-1.jpeg"), expected),
            (Some("storage://cat-s3/out/shoes/../sku-1.jpeg"), expected),
            (Some("s3://bucket/out/shoes/sku-1.jpeg"), expected),
        ] {
            assert_eq!(reported_object(expected, reported), checked, "{reported:?}");
        }
    }
}
