//! Storage connectors (docs/claid-api.md): the registry behind `…/storage/storages` (list, create,
//! get, update, delete, and `…/storage/storage-types`), the connectors given up front
//! ([`StorageConnector`], from `Scenario::storage` or `--storages FILE`), the 422 checks of
//! `storage://NAME/…` inputs and destinations, and the reads, listings and writes of objects in
//! a connector's bucket (through `objects::ObjectStorage`, counted in the stats).
//!
//! Claid's `StorageIn` has no endpoint or region: connectors created through the API reach the
//! scenario's `storage_endpoint` and `storage_region` (Amazon S3 itself when unset); connectors
//! given up front carry their own. Only `s3` connectors are read and written; `gcs` and
//! `web_folder` connectors can be managed but a request that uses one is answered 422.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use crate::claid::request::FieldError;
use crate::claid::wire::{
    Envelope, StorageCredentialsOut, StorageOut, StorageParametersOut, StorageType,
};
use crate::emulator::server::{
    AppState, api_error, field_error, json_body, lock, now_rfc3339, validation_error,
};
use crate::emulator::stats::Recorder;
use crate::objects::{
    Access, Credentials, ObjectError, ObjectInfo, ObjectStorage, ObjectStorageConfig, Provider,
    check_bucket, check_key,
};
use crate::text::escape;

/// A storage connector given up front: the name used in `storage://NAME/…` and the bucket,
/// prefix, endpoint and keys behind it. `Debug` never shows the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConnector {
    pub name: String,
    pub storage: ObjectStorageConfig,
}

/// Longest connector name (`StorageIn.name`).
const MAX_NAME_CHARS: usize = 50;

/// File extensions of the objects a folder input processes (case-insensitive).
const IMAGE_EXTENSIONS: &[&str] = &[
    "png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff", "avif", "heic",
];

/// Checks a connector name; the error completes "name …".
pub(crate) fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err("must be at most 50 characters");
    }
    if name
        .chars()
        .any(|c| c == '/' || c.is_whitespace() || c.is_control())
    {
        return Err(
            "may not hold \"/\", whitespace or control characters (it is the NAME of storage://NAME/…)",
        );
    }
    Ok(())
}

/// Splits `storage://NAME/path` into its name and path.
pub(crate) fn split_uri(uri: &str) -> Option<(&str, &str)> {
    let rest = uri.strip_prefix("storage://")?;
    Some(rest.split_once('/').unwrap_or((rest, "")))
}

/// Every connector of one emulator.
pub(crate) struct Registry {
    inner: Mutex<Inner>,
    /// Endpoint and region of connectors created through the API.
    endpoint: Option<String>,
    region: Option<String>,
    /// `storage://NAME/…` without a connector NAME falls back to `<storage_root>/NAME/…`.
    has_root: bool,
}

struct Inner {
    next_id: u64,
    by_id: BTreeMap<u64, Connector>,
}

#[derive(Clone)]
struct Connector {
    id: u64,
    name: String,
    kind: StorageType,
    created_at: String,
    params: Params,
    /// The bucket client of an `s3` connector.
    client: Option<ObjectStorage>,
}

#[derive(Clone)]
enum Params {
    /// `s3` and `gcs`: the bucket, the prefix (`path`) and the keys, plus where to reach it.
    Cloud(ObjectStorageConfig),
    WebFolder {
        base_url: String,
    },
}

/// What serves `storage://NAME/…`.
pub(crate) enum Backing {
    /// An `s3` connector.
    Bucket(ObjectStorage),
    /// A connector of another type.
    Unsupported(StorageType),
    /// The built-in synthetic images (no connector is called `demo`).
    Demo,
    /// The scenario's storage root folder.
    Root,
    /// Nothing.
    Unknown,
}

/// Where a storage output goes.
pub(crate) struct Destination {
    /// The connector's name.
    pub(crate) connector: String,
    pub(crate) storage: ObjectStorage,
    /// The path after `storage://NAME/`: a key, or a folder when it ends in `/`.
    pub(crate) path: String,
}

impl Destination {
    /// The key of an output named `file_name`: the path itself, or `file_name` inside it when
    /// the path is a folder (or `as_folder`, as for batches).
    pub(crate) fn key(&self, file_name: &str, as_folder: bool) -> String {
        if self.path.ends_with('/') {
            format!("{}{file_name}", self.path)
        } else if as_folder {
            format!("{}/{file_name}", self.path)
        } else {
            self.path.clone()
        }
    }

    /// `storage://NAME/key`.
    pub(crate) fn claid_uri(&self, key: &str) -> String {
        format!("storage://{}/{key}", self.connector)
    }
}

impl Registry {
    /// The registry of a new emulator, holding the scenario's connectors (ids 1, 2, …).
    pub(crate) fn new(
        connectors: &[StorageConnector],
        endpoint: Option<String>,
        region: Option<String>,
        has_root: bool,
    ) -> Result<Registry, String> {
        let mut by_id = BTreeMap::new();
        let created_at = now_rfc3339();
        for (idx, connector) in connectors.iter().enumerate() {
            check_name(&connector.name).map_err(|reason| {
                format!("storage name \"{}\" {reason}", escape(&connector.name))
            })?;
            if by_id.values().any(|c: &Connector| c.name == connector.name) {
                return Err(format!(
                    "two storages are named \"{}\"",
                    escape(&connector.name)
                ));
            }
            let client = ObjectStorage::new(&connector.storage)
                .map_err(|err| format!("storage \"{}\": {err}", escape(&connector.name)))?;
            let id = idx as u64 + 1;
            by_id.insert(
                id,
                Connector {
                    id,
                    name: connector.name.clone(),
                    kind: match connector.storage.access.provider() {
                        Provider::S3 => StorageType::S3,
                        Provider::Gcs => StorageType::Gcs,
                    },
                    created_at: created_at.clone(),
                    params: Params::Cloud(connector.storage.clone()),
                    client: Some(client),
                },
            );
        }
        Ok(Registry {
            inner: Mutex::new(Inner {
                next_id: by_id.len() as u64 + 1,
                by_id,
            }),
            endpoint,
            region,
            has_root,
        })
    }

    /// What serves `storage://name/…`: a connector first, then the built-in `demo`, then the
    /// storage root.
    pub(crate) fn backing(&self, name: &str) -> Backing {
        let inner = lock(&self.inner);
        match inner.by_id.values().find(|c| c.name == name) {
            Some(Connector {
                client: Some(client),
                ..
            }) => Backing::Bucket(client.clone()),
            Some(connector) => Backing::Unsupported(connector.kind.clone()),
            None if name == "demo" => Backing::Demo,
            None if self.has_root => Backing::Root,
            None => Backing::Unknown,
        }
    }

    /// The 422 problem of an input URI at `field`, if any: an unknown or unusable storage, or a
    /// path that could leave the connector's prefix.
    pub(crate) fn check_input(&self, field: &str, uri: &str) -> Option<FieldError> {
        let (name, path) = split_uri(uri)?;
        let problem = match self.backing(name) {
            Backing::Bucket(_) => check_key(path).err().map(|err| unsafe_path(path, &err)),
            Backing::Unsupported(kind) => Some(unsupported(name, &kind)),
            Backing::Unknown => Some(not_connected(name)),
            Backing::Demo | Backing::Root => None,
        };
        problem.map(|message| FieldError {
            path: field.to_owned(),
            message,
        })
    }

    /// The 422 problem of a batch folder input at `field`, if any.
    pub(crate) fn check_folder(&self, field: &str, uri: &str) -> Option<FieldError> {
        let message = match split_uri(uri) {
            None => "a folder input must be storage://NAME/folder/".to_owned(),
            Some((name, folder)) => match self.backing(name) {
                Backing::Bucket(_) => {
                    let folder = folder.trim_end_matches('/');
                    (!folder.is_empty())
                        .then(|| check_key(folder).err().map(|err| unsafe_path(folder, &err)))
                        .flatten()?
                }
                Backing::Unsupported(kind) => unsupported(name, &kind),
                Backing::Unknown => not_connected(name),
                Backing::Demo | Backing::Root => format!(
                    "storage \"{}\" cannot be listed: folder inputs need a connected s3 storage",
                    escape(name)
                ),
            },
        };
        Some(FieldError {
            path: field.to_owned(),
            message,
        })
    }

    /// The 422 problem of `output.destination`, if any. Only `storage://` destinations are
    /// checked (and honoured); others are ignored and the output gets a `tmp_url`.
    pub(crate) fn check_destination(&self, uri: &str) -> Option<FieldError> {
        let (name, path) = split_uri(uri)?;
        let message = match self.backing(name) {
            Backing::Bucket(_) => {
                let key = path.strip_suffix('/').unwrap_or(path);
                check_key(key).err().map(|err| unsafe_path(path, &err))?
            }
            Backing::Unsupported(kind) => unsupported(name, &kind),
            Backing::Unknown => not_connected(name),
            Backing::Demo | Backing::Root => format!(
                "storage \"{}\" is read-only: outputs need a connected s3 storage",
                escape(name)
            ),
        };
        Some(FieldError {
            path: "output.destination".to_owned(),
            message,
        })
    }

    /// The storage an output goes to, for a `storage://` destination of an `s3` connector.
    pub(crate) fn destination(&self, uri: &str) -> Option<Destination> {
        let (name, path) = split_uri(uri)?;
        match self.backing(name) {
            Backing::Bucket(storage) => Some(Destination {
                connector: name.to_owned(),
                storage,
                path: path.to_owned(),
            }),
            _ => None,
        }
    }
}

fn not_connected(name: &str) -> String {
    format!(
        "storage \"{}\" is not connected: connect it with POST /v1/storage/storages (or the emulator's --storages)",
        escape(name)
    )
}

fn unsupported(name: &str, kind: &StorageType) -> String {
    format!(
        "storage \"{}\" is a {} storage; the emulator reads and writes only s3 storages",
        escape(name),
        kind.as_str()
    )
}

fn unsafe_path(path: &str, err: &ObjectError) -> String {
    match err {
        ObjectError::UnsafeKey { reason, .. } => {
            format!("storage path \"{}\" cannot be used: {reason}", escape(path))
        }
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Object I/O, counted

/// Reads the input object `key`.
pub(crate) async fn read(
    recorder: &Recorder,
    storage: &ObjectStorage,
    key: &str,
    max_bytes: u64,
) -> Result<Vec<u8>, ObjectError> {
    match storage.get(key, max_bytes).await {
        Ok(bytes) => {
            recorder.update(|s| {
                s.storage_reads += 1;
                s.storage_read_bytes += bytes.len() as u64;
            });
            Ok(bytes.to_vec())
        }
        Err(err) => {
            recorder.update(|s| s.storage_errors += 1);
            Err(err)
        }
    }
}

/// Writes an output object in one request.
pub(crate) async fn write(
    recorder: &Recorder,
    storage: &ObjectStorage,
    key: &str,
    bytes: Vec<u8>,
) -> Result<ObjectInfo, ObjectError> {
    match storage.put(key, bytes::Bytes::from(bytes)).await {
        Ok(info) => {
            recorder.update(|s| {
                s.storage_writes += 1;
                s.storage_written_bytes += info.size;
            });
            Ok(info)
        }
        Err(err) => {
            recorder.update(|s| s.storage_errors += 1);
            Err(err)
        }
    }
}

/// The image objects under `folder` (by extension), as keys relative to the connector's
/// prefix, sorted.
pub(crate) async fn list_images(
    recorder: &Recorder,
    storage: &ObjectStorage,
    folder: &str,
    recursive: bool,
) -> Result<Vec<String>, ObjectError> {
    match storage.list(folder, recursive).await {
        Ok(objects) => {
            recorder.update(|s| s.storage_lists += 1);
            Ok(objects
                .into_iter()
                .map(|object| object.key)
                .filter(|key| is_image_name(key))
                .collect())
        }
        Err(err) => {
            recorder.update(|s| s.storage_errors += 1);
            Err(err)
        }
    }
}

fn is_image_name(key: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    name.rsplit_once('.').is_some_and(|(stem, ext)| {
        !stem.is_empty()
            && IMAGE_EXTENSIONS
                .iter()
                .any(|known| known.eq_ignore_ascii_case(ext))
    })
}

// ---------------------------------------------------------------------------------------------
// The API: `…/storage/storage-types`, `…/storage/storages[/{id}]`

/// `GET …/storage/storage-types`.
pub async fn storage_types() -> Response {
    Json(Envelope {
        data: ["web_folder", "s3", "gcs"],
    })
    .into_response()
}

/// `GET …/storage/storages`.
pub async fn list(State(state): State<Arc<AppState>>) -> Response {
    let inner = lock(&state.storages.inner);
    let views: Vec<StorageOut> = inner.by_id.values().map(view).collect();
    drop(inner);
    Json(Envelope { data: views }).into_response()
}

/// `POST …/storage/storages`.
pub async fn create(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let value = match json_body(&headers, body) {
        Ok(value) => value,
        Err(response) => return *response,
    };
    let spec = match parse(&value, None) {
        Ok(spec) => spec,
        Err(errors) => return validation_error(&errors),
    };
    let registry = &state.storages;
    let params = spec
        .params
        .into_params(registry.endpoint.clone(), registry.region.clone());
    let client = match build_client(&spec.kind, &params) {
        Ok(client) => client,
        Err(response) => return *response,
    };
    let mut inner = lock(&registry.inner);
    if inner.by_id.values().any(|c| c.name == spec.name) {
        drop(inner);
        return field_error("name", "a storage with this name already exists");
    }
    let id = inner.next_id;
    inner.next_id += 1;
    let connector = Connector {
        id,
        name: spec.name,
        kind: spec.kind,
        created_at: now_rfc3339(),
        params,
        client,
    };
    let shown = view(&connector);
    inner.by_id.insert(id, connector);
    drop(inner);
    Json(Envelope { data: shown }).into_response()
}

/// `GET …/storage/storages/{id}`.
pub async fn get_one(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let id = match storage_id(id) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    let found = lock(&state.storages.inner).by_id.get(&id).map(view);
    match found {
        Some(shown) => Json(Envelope { data: shown }).into_response(),
        None => not_found(),
    }
}

/// `PATCH …/storage/storages/{id}`: any of name, type and parameters; parameters merge into the
/// current ones unless the type changes between cloud and web folder (then they are given whole).
pub async fn update(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let id = match storage_id(id) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    let value = match json_body(&headers, body) {
        Ok(value) => value,
        Err(response) => return *response,
    };
    let Some(current) = lock(&state.storages.inner).by_id.get(&id).cloned() else {
        return not_found();
    };
    let spec = match parse(&value, Some(&current)) {
        Ok(spec) => spec,
        Err(errors) => return validation_error(&errors),
    };
    let (endpoint, region) = match &current.params {
        Params::Cloud(config) => (config.endpoint.clone(), config.region.clone()),
        Params::WebFolder { .. } => (
            state.storages.endpoint.clone(),
            state.storages.region.clone(),
        ),
    };
    let params = spec.params.into_params(endpoint, region);
    let client = match build_client(&spec.kind, &params) {
        Ok(client) => client,
        Err(response) => return *response,
    };
    let mut inner = lock(&state.storages.inner);
    if inner
        .by_id
        .values()
        .any(|c| c.id != id && c.name == spec.name)
    {
        drop(inner);
        return field_error("name", "a storage with this name already exists");
    }
    let Some(connector) = inner.by_id.get_mut(&id) else {
        drop(inner);
        return not_found();
    };
    connector.name = spec.name;
    connector.kind = spec.kind;
    connector.params = params;
    connector.client = client;
    let shown = view(connector);
    drop(inner);
    Json(Envelope { data: shown }).into_response()
}

/// `DELETE …/storage/storages/{id}`: disconnects (the bucket is untouched); answers the
/// disconnected storage.
pub async fn delete(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let id = match storage_id(id) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    let removed = lock(&state.storages.inner).by_id.remove(&id);
    match removed {
        Some(connector) => Json(Envelope {
            data: view(&connector),
        })
        .into_response(),
        None => not_found(),
    }
}

fn not_found() -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        "1404",
        "storage",
        "Storage not found.",
    )
}

fn storage_id(id: Result<Path<String>, PathRejection>) -> Result<u64, Box<Response>> {
    let raw = match id {
        Ok(Path(raw)) => raw,
        Err(e) => {
            return Err(Box::new(field_error(
                "storage_id",
                &format!("invalid path parameter: {e}"),
            )));
        }
    };
    raw.parse::<u64>()
        .map_err(|_| Box::new(field_error("storage_id", "value is not a valid integer")))
}

/// `StorageOutDetailed`: never the secret.
fn view(connector: &Connector) -> StorageOut {
    let parameters = match &connector.params {
        Params::Cloud(config) => StorageParametersOut {
            bucket: Some(config.bucket.clone()),
            path: Some(config.prefix.clone()),
            credentials: Some(StorageCredentialsOut {
                access_key: config.access.key_id().to_owned(),
            }),
            base_url: None,
        },
        Params::WebFolder { base_url } => StorageParametersOut {
            base_url: Some(base_url.clone()),
            ..StorageParametersOut::default()
        },
    };
    StorageOut {
        id: connector.id,
        name: connector.name.clone(),
        kind: connector.kind.clone(),
        parameters,
        created_at: connector.created_at.clone(),
    }
}

/// The client of an `s3` connector (none for other types), or the 422 naming the problem.
fn build_client(
    kind: &StorageType,
    params: &Params,
) -> Result<Option<ObjectStorage>, Box<Response>> {
    match (kind, params) {
        (StorageType::S3 | StorageType::Gcs, Params::Cloud(config))
            if config.access.provider() == Provider::Gcs || *kind == StorageType::S3 =>
        {
            ObjectStorage::new(config)
                .map(Some)
                .map_err(|err| Box::new(field_error("parameters", &err.to_string())))
        }
        _ => Ok(None),
    }
}

// ---------------------------------------------------------------------------------------------
// Validation of `StorageIn` and `StorageInUpdate`

/// A valid body: the connector's name, type and parameters (merged with the current ones for an
/// update).
struct Spec {
    name: String,
    kind: StorageType,
    params: ParamsSpec,
}

enum ParamsSpec {
    Cloud {
        bucket: String,
        path: String,
        access: Access,
    },
    WebFolder {
        base_url: String,
    },
}

impl ParamsSpec {
    fn into_params(self, endpoint: Option<String>, region: Option<String>) -> Params {
        match self {
            ParamsSpec::Cloud {
                bucket,
                path,
                access,
            } => Params::Cloud(ObjectStorageConfig {
                bucket,
                prefix: path,
                // A key of the config's own (a gs:// storage) is reached as it says.
                endpoint: endpoint.filter(|_| access.provider() == Provider::S3),
                region,
                access,
            }),
            ParamsSpec::WebFolder { base_url } => Params::WebFolder { base_url },
        }
    }
}

/// Collects the problems of one body.
#[derive(Default)]
struct Problems(Vec<FieldError>);

impl Problems {
    fn add(&mut self, path: &str, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.to_owned(),
            message: message.into(),
        });
    }

    /// `map` as an object allowing `allowed` keys (each other key is a problem).
    fn object<'a>(
        &mut self,
        value: &'a Value,
        path: &str,
        allowed: &[&str],
    ) -> Option<&'a Map<String, Value>> {
        let Some(map) = value.as_object() else {
            self.add(path, "must be an object");
            return None;
        };
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                let at = if path == "body" {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                self.add(
                    &at,
                    format!("unknown field; allowed fields: {}", allowed.join(", ")),
                );
            }
        }
        Some(map)
    }

    /// A string field; `required` makes its absence a problem.
    fn string(
        &mut self,
        map: &Map<String, Value>,
        key: &str,
        path: &str,
        required: bool,
    ) -> Option<String> {
        match map.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                self.add(path, "must be a string");
                None
            }
            None => {
                if required {
                    self.add(path, "field required");
                }
                None
            }
        }
    }
}

/// Validates a `StorageIn` (`current` = `None`) or a `StorageInUpdate` merged into `current`.
fn parse(value: &Value, current: Option<&Connector>) -> Result<Spec, Vec<FieldError>> {
    let mut p = Problems::default();
    let create = current.is_none();
    let Some(map) = p.object(value, "body", &["name", "type", "parameters"]) else {
        return Err(p.0);
    };
    let name = p.string(map, "name", "name", create);
    if let Some(name) = &name {
        if let Err(reason) = check_name(name) {
            p.add("name", format!("name {reason}"));
        }
    }
    let kind = match map.get("type") {
        None if create => {
            p.add("type", "field required");
            None
        }
        None => current.map(|c| c.kind.clone()),
        Some(v) => match serde_json::from_value::<StorageType>(v.clone()) {
            Ok(StorageType::Other(_)) | Err(_) => {
                p.add("type", "must be one of web_folder, s3, gcs");
                None
            }
            Ok(kind) => Some(kind),
        },
    };
    let is_web = |k: &StorageType| matches!(k, StorageType::WebFolder);
    // Parameters are merged into the current ones only while the family stays the same.
    let base = current.and_then(|c| match &kind {
        Some(k) if is_web(k) == is_web(&c.kind) => Some(&c.params),
        _ => None,
    });
    let params = match (map.get("parameters"), &kind) {
        (None, _) if create => {
            p.add("parameters", "field required");
            None
        }
        (None, Some(_)) if base.is_none() && current.is_some() => {
            p.add(
                "parameters",
                "required when the type changes between a cloud storage and a web folder",
            );
            None
        }
        (None, _) => None,
        (Some(_), None) => None, // The type is wrong; its parameters cannot be checked.
        (Some(v), Some(kind)) if is_web(kind) => parse_web_folder(&mut p, v, base),
        (Some(v), Some(_)) => parse_cloud(&mut p, v, base),
    };
    if !p.0.is_empty() {
        return Err(p.0);
    }
    let (Some(name), Some(kind)) = (name.or_else(|| current.map(|c| c.name.clone())), kind) else {
        return Err(vec![FieldError {
            path: "body".to_owned(),
            message: "name and type are required".to_owned(),
        }]);
    };
    let params = match (params, current) {
        (Some(params), _) => params,
        (None, Some(current)) => match &current.params {
            Params::Cloud(config) => ParamsSpec::Cloud {
                bucket: config.bucket.clone(),
                path: config.prefix.clone(),
                access: config.access.clone(),
            },
            Params::WebFolder { base_url } => ParamsSpec::WebFolder {
                base_url: base_url.clone(),
            },
        },
        (None, None) => {
            return Err(vec![FieldError {
                path: "parameters".to_owned(),
                message: "field required".to_owned(),
            }]);
        }
    };
    Ok(Spec { name, kind, params })
}

/// `S3Parameters` / `GCSParameters` (or their update forms merged into `base`).
fn parse_cloud(p: &mut Problems, value: &Value, base: Option<&Params>) -> Option<ParamsSpec> {
    let base = match base {
        Some(Params::Cloud(config)) => Some(config),
        _ => None,
    };
    let whole = base.is_none();
    let map = p.object(value, "parameters", &["bucket", "path", "credentials"])?;
    let bucket = p.string(map, "bucket", "parameters.bucket", whole);
    if let Some(bucket) = &bucket {
        if let Err(reason) = check_bucket(bucket) {
            p.add("parameters.bucket", format!("bucket name {reason}"));
        }
    }
    let path = p.string(map, "path", "parameters.path", false);
    let path = path.and_then(|path| {
        let trimmed = path.trim_matches('/');
        match (trimmed.is_empty(), check_key(trimmed)) {
            (false, Err(err)) => {
                p.add("parameters.path", unsafe_path(&path, &err));
                None
            }
            _ => Some(trimmed.to_owned()),
        }
    });
    let (mut access_key, mut secret) = (None, None);
    match map.get("credentials") {
        None if whole => p.add("parameters.credentials", "field required"),
        None => {}
        Some(v) => {
            if let Some(creds) = p.object(
                v,
                "parameters.credentials",
                &["access_key", "secret_access_key"],
            ) {
                let path_key = "parameters.credentials.access_key";
                let path_secret = "parameters.credentials.secret_access_key";
                access_key = p.string(creds, "access_key", path_key, whole);
                secret = p.string(creds, "secret_access_key", path_secret, whole);
                for (value, path) in [(&access_key, path_key), (&secret, path_secret)] {
                    if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                        p.add(path, "must not be empty");
                    }
                }
            }
        }
    }
    Some(ParamsSpec::Cloud {
        bucket: bucket.or_else(|| base.map(|b| b.bucket.clone()))?,
        path: path
            .or_else(|| base.map(|b| b.prefix.clone()))
            .unwrap_or_default(),
        // Each key taken from the body, or else kept from the connector being updated.
        access: match (access_key, secret, base.map(|b| &b.access)) {
            (access_key, secret, Some(Access::S3(old))) => Access::S3(Credentials::new(
                access_key.unwrap_or_else(|| old.access_key_id.clone()),
                secret.unwrap_or_else(|| old.secret_access_key.clone()),
            )),
            (Some(access_key), Some(secret), _) => Access::S3(Credentials::new(access_key, secret)),
            (None, None, Some(kept)) => kept.clone(),
            _ => return None,
        },
    })
}

/// `WebFolderParameters`.
fn parse_web_folder(p: &mut Problems, value: &Value, base: Option<&Params>) -> Option<ParamsSpec> {
    let base = match base {
        Some(Params::WebFolder { base_url }) => Some(base_url),
        _ => None,
    };
    let map = p.object(value, "parameters", &["base_url"])?;
    let base_url = p.string(map, "base_url", "parameters.base_url", base.is_none());
    if let Some(url) = &base_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            p.add("parameters.base_url", "must be an http:// or https:// URL");
        }
    }
    Some(ParamsSpec::WebFolder {
        base_url: base_url.or_else(|| base.cloned())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(result: Result<Spec, Vec<FieldError>>) -> Vec<String> {
        match result {
            Ok(_) => Vec::new(),
            Err(errors) => errors.into_iter().map(|e| e.path).collect(),
        }
    }

    #[test]
    fn storage_in_problems_are_keyed_by_field_path() {
        let check = |body: Value, want: &[&str]| {
            assert_eq!(paths(parse(&body, None)), want, "{body}");
        };
        let s3 = serde_json::json!({"name": "cat", "type": "s3", "parameters":
            {"bucket": "bkt", "path": "raw/", "credentials": {"access_key": "AK", "secret_access_key": "SK"}}});
        check(s3.clone(), &[]);
        check(serde_json::json!({}), &["name", "type", "parameters"]);
        check(serde_json::json!([]), &["body"]);
        check(
            serde_json::json!({"name": "a/b", "type": "ftp", "parameters": {}, "x": 1}),
            &["x", "name", "type"],
        );
        check(
            serde_json::json!({"name": "c", "type": "s3", "parameters": {"bucket": "", "path": "../x", "credentials": {"access_key": "A"}}}),
            &[
                "parameters.bucket",
                "parameters.path",
                "parameters.credentials.secret_access_key",
            ],
        );
        check(
            serde_json::json!({"name": "w", "type": "web_folder", "parameters": {"base_url": "ftp://x"}}),
            &["parameters.base_url"],
        );
        check(
            serde_json::json!({"name": "w", "type": "web_folder", "parameters": {"bucket": "b"}}),
            &["parameters.bucket", "parameters.base_url"],
        );
        let long = "n".repeat(51);
        check(
            serde_json::json!({"name": long, "type": "gcs", "parameters": s3["parameters"]}),
            &["name"],
        );
    }

    #[test]
    fn updates_merge_into_the_current_parameters() {
        let current = Connector {
            id: 1,
            name: "cat".into(),
            kind: StorageType::S3,
            created_at: String::new(),
            params: Params::Cloud(ObjectStorageConfig {
                bucket: "bkt".into(),
                prefix: "raw".into(),
                endpoint: None,
                region: None,
                access: Access::S3(Credentials::new("AK", "SK")),
            }),
            client: None,
        };
        let spec = parse(
            &serde_json::json!({"parameters": {"path": "/out/", "credentials": {"secret_access_key": "SK2"}}}),
            Some(&current),
        )
        .map_err(|e| paths(Err(e)))
        .expect("valid update");
        assert_eq!(spec.name, "cat");
        let ParamsSpec::Cloud {
            bucket,
            path,
            access,
        } = spec.params
        else {
            panic!("cloud parameters");
        };
        let credentials = access.s3().expect("s3 keys");
        assert_eq!(
            (
                bucket.as_str(),
                path.as_str(),
                credentials.access_key_id.as_str(),
                credentials.secret_access_key.as_str()
            ),
            ("bkt", "out", "AK", "SK2")
        );
        // A new family needs its parameters whole.
        assert_eq!(
            paths(parse(
                &serde_json::json!({"type": "web_folder"}),
                Some(&current)
            )),
            vec!["parameters"]
        );
    }

    #[test]
    fn folder_images_are_chosen_by_extension() {
        for (key, image) in [
            ("a/b.PNG", true),
            ("b.jpeg", true),
            ("c.heic", true),
            ("notes.txt", false),
            ("a/", false),
            (".png", false),
            ("noext", false),
        ] {
            assert_eq!(is_image_name(key), image, "{key}");
        }
    }
}
