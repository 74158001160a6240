//! Wire types of the Claid API (docs/claid-api.md): the `data` envelope, async task
//! and batch records, batch requests, image objects, the error envelope, the result object a
//! webhook delivers, and storage connectors. Shared by the client and the emulator; kept
//! separate from domain and stored types and converted by hand at the boundary.
//!
//! Parsing is tolerant: unknown fields are ignored and optional ones default, whether absent or
//! `null` (Claid's schema is generated from models whose unset optional fields may be sent as
//! `null`), so a Claid that adds fields, or spells "none" as `null`, does not break the daemon:
//! a submit answer it cannot read would otherwise be in doubt and sent again.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// Every 2xx JSON body is `{"data": <payload>}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub data: T,
}

/// Status of an async task. Unknown values are kept, not rejected (docs/claid-api.md); the
/// known ones are read in any letter case (`done`, `Done`), written as Claid spells them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE", from = "String")]
pub enum TaskStatus {
    Accepted,
    Waiting,
    Processing,
    Paused,
    Done,
    Error,
    Cancelled,
    #[serde(untagged)]
    Other(String),
}

impl TaskStatus {
    /// As Claid spells it (`CANCELLED`).
    pub fn as_str(&self) -> &str {
        match self {
            TaskStatus::Accepted => "ACCEPTED",
            TaskStatus::Waiting => "WAITING",
            TaskStatus::Processing => "PROCESSING",
            TaskStatus::Paused => "PAUSED",
            TaskStatus::Done => "DONE",
            TaskStatus::Error => "ERROR",
            TaskStatus::Cancelled => "CANCELLED",
            TaskStatus::Other(other) => other,
        }
    }
}

/// As Claid spells it, for messages and reports.
impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<String> for TaskStatus {
    fn from(text: String) -> TaskStatus {
        match text.trim().to_ascii_uppercase().as_str() {
            "ACCEPTED" => TaskStatus::Accepted,
            "WAITING" => TaskStatus::Waiting,
            "PROCESSING" => TaskStatus::Processing,
            "PAUSED" => TaskStatus::Paused,
            "DONE" => TaskStatus::Done,
            "ERROR" => TaskStatus::Error,
            "CANCELLED" | "CANCELED" => TaskStatus::Cancelled,
            _ => TaskStatus::Other(text),
        }
    }
}

impl TaskStatus {
    /// DONE, ERROR and CANCELLED end a task; everything else means "poll again".
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            TaskStatus::Done | TaskStatus::Error | TaskStatus::Cancelled
        )
    }
}

/// `AsyncAcceptedResponse` and `AsyncResultResponse`: one shape for submit and poll answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AsyncTask {
    #[serde(deserialize_with = "task_id")]
    pub id: u64,
    pub status: TaskStatus,
    /// Optional in Claid's schema: when absent (or not on the API's origin) the client polls
    /// `{base}/image/edit/async/{id}` ([`crate::claid::Client::poll_url`]).
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "String::is_empty"
    )]
    pub result_url: String,
    #[serde(default, deserialize_with = "lenient_string")]
    pub created_at: String,
    #[serde(default)]
    pub request: serde_json::Value,
    #[serde(default, deserialize_with = "lenient_errors")]
    pub errors: Vec<TaskError>,
    #[serde(default, deserialize_with = "null_default")]
    pub result: TaskResult,
}

impl AsyncTask {
    /// An announcement that is no result: not final (a task named while it runs), or DONE
    /// without the result object (it only says the task ended; Claid does not document its
    /// webhook body fully). Its result is polled, not taken as missing.
    pub fn lacks_result(&self) -> bool {
        !self.status.is_terminal()
            || (self.status == TaskStatus::Done && self.result.output_object.is_none())
    }
}

/// One entry of `errors` (`BatchPipelineError`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskError {
    #[serde(default, deserialize_with = "lenient_string")]
    pub error: String,
    #[serde(default, deserialize_with = "lenient_string")]
    pub created_at: String,
    /// The failing input, when Claid could read it (`PipelineInputObjectInError`). A malformed
    /// object is dropped rather than failing the whole answer.
    #[serde(
        default,
        deserialize_with = "lenient_image_object",
        skip_serializing_if = "Option::is_none"
    )]
    pub input_object: Option<ImageObject>,
    /// Sent as a plain message, not an error object (`"errors": ["a warning"]`): kept for its
    /// text, but no image's answer (a batch's warning is not one of its images' results).
    #[serde(skip)]
    pub plain: bool,
}

/// An optional field sent as `null` reads as its default, as an absent one does.
fn null_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(
    deserializer: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A text field that may come as a string, a number (`"error_code": 9000`) or `null` (empty).
fn lenient_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(text) => text,
        other => other.to_string(),
    })
}

/// `error_details`, a free-form object in Claid's schema: each value a list of messages, one
/// message, or anything else (kept as its JSON text); `null` or a non-object is kept under `""`.
fn lenient_details<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, Vec<String>>, D::Error> {
    let text = |value: serde_json::Value| match value {
        serde_json::Value::String(text) => text,
        other => other.to_string(),
    };
    Ok(match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::Null => BTreeMap::new(),
        serde_json::Value::Object(map) => map
            .into_iter()
            .map(|(key, value)| {
                let messages = match value {
                    serde_json::Value::Array(items) => items.into_iter().map(text).collect(),
                    serde_json::Value::Null => Vec::new(),
                    other => vec![text(other)],
                };
                (key, messages)
            })
            .collect(),
        other => BTreeMap::from([(String::new(), vec![text(other)])]),
    })
}

/// A number the daemon does not use (`mps`): `null`, a string or anything else reads as 0
/// (a string holding a number as that number) instead of making a billed result unreadable.
fn lenient_f64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Ok(match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::Number(number) => number.as_f64().unwrap_or_default(),
        serde_json::Value::String(text) => text.trim().parse().unwrap_or_default(),
        _ => 0.0,
    })
}

/// `errors`: a list of Claid's error objects; a list item that is a plain message (or any
/// other value), or a single message instead of a list, is kept as its text. A DONE answer
/// with `"errors": ["a warning"]` made the billed result unreadable.
fn lenient_errors<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<TaskError>, D::Error> {
    let text = |value: serde_json::Value| match value {
        serde_json::Value::String(text) => text,
        other => other.to_string(),
    };
    let one = |value: serde_json::Value| match value {
        serde_json::Value::Object(_) => serde_json::from_value(value.clone())
            .unwrap_or_else(|_| TaskError::message(text(value))),
        other => TaskError::message(text(other)),
    };
    Ok(match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::Null => Vec::new(),
        serde_json::Value::Array(items) => items.into_iter().map(one).collect(),
        other => vec![one(other)],
    })
}

impl TaskError {
    /// An error that is only its message.
    fn message(error: String) -> TaskError {
        TaskError {
            error,
            created_at: String::new(),
            input_object: None,
            plain: true,
        }
    }
}

/// A task id: an integer, or a number with no fraction (`1001.0`, as JSON Schema's integers
/// allow) that a double holds exactly; anything else is an error (a poll answer with its id
/// written `1001.0` was unreadable until `give_up_after`).
fn task_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    number
        .as_u64()
        .or_else(|| {
            number
                .as_f64()
                .filter(|f| f.fract() == 0.0 && (0.0..=9_007_199_254_740_992.0).contains(f))
                // In range and whole, so the cast is exact.
                .map(|f| f as u64)
        })
        .ok_or_else(|| serde::de::Error::custom(format!("{number} is not a task id")))
}

/// A pixel count: an integer, or a number with no fraction (`8.0`); anything else is an error.
fn whole_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    number
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .or_else(|| {
            number
                .as_f64()
                .filter(|f| f.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(f))
                // In range and whole, so the cast is exact.
                .map(|f| f as u32)
        })
        .ok_or_else(|| serde::de::Error::custom(format!("{number} is not a pixel count")))
}

fn lenient_image_object<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<ImageObject>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(deserializer)?;
    Ok(value.and_then(|v| serde_json::from_value(v).ok()))
}

/// `result`: `{}` until DONE, then both objects.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TaskResult {
    /// Not used by the daemon: a malformed one is dropped rather than failing the result.
    #[serde(
        default,
        deserialize_with = "lenient_image_object",
        skip_serializing_if = "Option::is_none"
    )]
    pub input_object: Option<ImageObject>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_object: Option<ImageObject>,
}

/// `PipelineInputObject` / `PipelineOutputObject`. The daemon needs only where the output
/// is (`tmp_url` or the object's key): a description it does not use that is missing, or
/// whole numbers written as decimals (`"width": 8.0`, valid JSON Schema integers), never
/// makes a billed result unreadable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageObject {
    #[serde(default, deserialize_with = "lenient_string")]
    pub ext: String,
    #[serde(default, deserialize_with = "lenient_f64")]
    pub mps: f64,
    #[serde(default, deserialize_with = "lenient_string")]
    pub mime: String,
    #[serde(default, deserialize_with = "lenient_string")]
    pub format: String,
    #[serde(default, deserialize_with = "whole_number")]
    pub width: u32,
    #[serde(default, deserialize_with = "whole_number")]
    pub height: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmp_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_bucket: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claid_storage_uri: Option<String>,
    /// A GCS output's key in its bucket (batch outputs may name it only so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs_bucket: Option<String>,
}

impl ImageObject {
    /// The output's file name as Claid chose it: the last path segment of `tmp_url` (else of
    /// `object_key`, `gcs_key`, `object_uri` or `claid_storage_uri`), without query or
    /// fragment, percent-decoded (a URL encodes `café-1.png` as `caf%C3%A9-1.png`). `None`
    /// when no location is given or it ends in `/`.
    pub fn file_name(&self) -> Option<String> {
        self.file_names().into_iter().next()
    }

    /// Every file name the output's locations give, in [`ImageObject::file_name`]'s order,
    /// each once: a `tmp_url` may be an opaque signed URL (its last segment a hash) while
    /// `object_key` still carries the name Claid chose.
    pub fn file_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for name in [
            &self.tmp_url,
            &self.object_key,
            &self.gcs_key,
            &self.object_uri,
            &self.claid_storage_uri,
        ]
        .into_iter()
        .flatten()
        .map(|location| decoded(basename(location)))
        {
            if !name.is_empty() && !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }

    /// The object's key in its bucket, when Claid names it by key alone (`object_key`, or a
    /// GCS output's `gcs_key`).
    pub fn bucket_key(&self) -> Option<&str> {
        self.object_key.as_deref().or(self.gcs_key.as_deref())
    }
}

/// The last path segment of a URL or path, without query or fragment (may be empty).
pub fn basename(location: &str) -> &str {
    let end = location.find(['?', '#']).unwrap_or(location.len());
    let path = &location[..end];
    // Past the scheme's `//` the first segment is the host, not a file.
    let path = match path.split_once("://") {
        Some((_, rest)) => rest.split_once('/').map_or("", |(_, p)| p),
        None => path,
    };
    path.rsplit('/').next().unwrap_or("")
}

/// `name` percent-decoded (invalid UTF-8 kept as replacement characters): how a file name
/// in a URL is compared with one given plainly.
pub fn decoded(name: &str) -> String {
    percent_encoding::percent_decode_str(name)
        .decode_utf8_lossy()
        .into_owned()
}

/// The file name Claid gives a batch output: the input's basename with the output format's
/// extension (`…/sku-1.png` with jpeg output → `sku-1.jpg`; no extension → one is added).
/// `image` stands in for an input without a basename.
pub fn batch_output_name(input: &str, ext: &str) -> String {
    output_name_of(&decoded(basename(input)), ext)
}

/// The batch output name of an input whose file name is `name` (see [`batch_output_name`]).
pub fn output_name_of(name: &str, ext: &str) -> String {
    let stem = match name.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem,
        _ => name,
    };
    let stem = if stem.is_empty() { "image" } else { stem };
    format!("{stem}.{ext}")
}

/// `BatchEditRequest.input`: a list of image URLs, one URL or storage folder, or
/// `{source, recursive}`. Serialized untagged, as Claid spells it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BatchInput {
    /// At least one image URL (`http(s)://` or a `storage://` file).
    Urls(Vec<String>),
    /// One image URL, or a storage folder (`storage://name/folder/`, see [`BatchInput::is_folder`]).
    One(String),
    /// `BatchEditInputOptions`: a folder, walked recursively on request.
    Source(BatchSource),
}

/// `BatchEditInputOptions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchSource {
    pub source: String,
    #[serde(default, deserialize_with = "null_default")]
    pub recursive: bool,
}

impl BatchInput {
    /// True for the folder forms: `{source, …}`, or one string ending in `/`.
    pub fn is_folder(&self) -> bool {
        match self {
            BatchInput::Urls(_) => false,
            BatchInput::One(url) => url.ends_with('/'),
            BatchInput::Source(_) => true,
        }
    }

    /// The image URLs of the list and single-image forms; `None` for folders.
    pub fn urls(&self) -> Option<Vec<&str>> {
        match self {
            BatchInput::Urls(urls) => Some(urls.iter().map(String::as_str).collect()),
            BatchInput::One(url) if !self.is_folder() => Some(vec![url.as_str()]),
            BatchInput::One(_) | BatchInput::Source(_) => None,
        }
    }
}

/// `BatchEditRequest`: the body of `POST …/image/edit/batch`. `operations` and `output` are the
/// async edit's (docs/claid-api.md, §4.2; `claid::request` validates them), kept as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchEditRequest {
    pub input: BatchInput,
    pub operations: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
}

/// `BatchAcceptedResponse` and `BatchResultResponse`: one shape for submit and poll answers.
/// `results` and `errors` are filled once the batch is DONE or ERROR; a DONE batch may carry
/// both (some images failed), in any order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "BatchTaskWire")]
pub struct BatchTask {
    pub id: u64,
    pub status: TaskStatus,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub result_url: String,
    pub created_at: String,
    /// The submitted body, echoed.
    pub request: serde_json::Value,
    pub errors: Vec<TaskError>,
    /// The results the daemon can read: an item with a missing or mistyped field is left out
    /// (counted in `unreadable_results`) instead of failing the whole answer, which lost every
    /// image of the batch to one bad item.
    pub results: Vec<BatchResultItem>,
    /// Result items the answer held that could not be read: an image left without a result
    /// may have its (billed) result among them, so it is held in doubt, not failed.
    #[serde(skip)]
    pub unreadable_results: usize,
}

/// [`BatchTask`] as it comes: absent and `null` fields read as empty, `results` item by item.
#[derive(Deserialize)]
struct BatchTaskWire {
    #[serde(deserialize_with = "task_id")]
    id: u64,
    status: TaskStatus,
    #[serde(default, deserialize_with = "lenient_string")]
    result_url: String,
    #[serde(default, deserialize_with = "lenient_string")]
    created_at: String,
    #[serde(default)]
    request: serde_json::Value,
    #[serde(default, deserialize_with = "lenient_errors")]
    errors: Vec<TaskError>,
    #[serde(default, deserialize_with = "readable_items")]
    results: (Vec<BatchResultItem>, usize),
}

impl From<BatchTaskWire> for BatchTask {
    fn from(wire: BatchTaskWire) -> BatchTask {
        let (results, unreadable_results) = wire.results;
        BatchTask {
            id: wire.id,
            status: wire.status,
            result_url: wire.result_url,
            created_at: wire.created_at,
            request: wire.request,
            errors: wire.errors,
            results,
            unreadable_results,
        }
    }
}

/// `results` item by item: those that do not parse are left out and counted, told in one
/// WARN per answer.
fn readable_items<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<(Vec<BatchResultItem>, usize), D::Error> {
    let items: Vec<serde_json::Value> = null_default(deserializer)?;
    let mut readable = Vec::with_capacity(items.len());
    let mut unreadable = 0usize;
    let mut first_error = None;
    for item in items {
        match serde_json::from_value::<BatchResultItem>(item) {
            Ok(item) => readable.push(item),
            Err(err) => {
                unreadable += 1;
                first_error.get_or_insert_with(|| err.to_string());
            }
        }
    }
    if let Some(error) = first_error {
        tracing::warn!(
            unreadable,
            readable = readable.len(),
            error = %crate::text::Escaped::str(&error),
            "Claid's answer for a batch holds results the daemon cannot read; images left without a result are held in doubt"
        );
    }
    Ok((readable, unreadable))
}

impl BatchTask {
    /// An announcement that is no result: not final (the batch named while it runs), or DONE
    /// with neither results nor errors (it only says the batch ended). Its results are polled,
    /// not taken as missing.
    pub fn lacks_result(&self) -> bool {
        !self.status.is_terminal()
            || (self.status == TaskStatus::Done
                && self.results.is_empty()
                && self.answering_errors() == 0)
    }

    /// Errors that may be an image's answer (not plain messages).
    fn answering_errors(&self) -> usize {
        self.errors.iter().filter(|error| !error.plain).count()
    }

    /// DONE with fewer results and errors than the batch's `images`: Claid may not have
    /// attached every result yet (a batch's results are not documented as attached at once).
    /// The same object listed twice is one result (counted twice, the image left without one
    /// failed at once instead of being asked again, then held in doubt).
    pub fn answers_fewer_than(&self, images: usize) -> bool {
        let distinct = self.results.len() - self.repeated_results();
        self.status == TaskStatus::Done && distinct + self.answering_errors() < images
    }

    /// Results that list an object an earlier result of the answer listed already: the
    /// answer is garbled where they stand, so an image left without a result may be one
    /// Claid billed (held in doubt, like one whose result could not be read).
    pub fn repeated_results(&self) -> usize {
        self.results
            .iter()
            .enumerate()
            .filter(|(at, item)| {
                self.results[..*at]
                    .iter()
                    .any(|before| before.output_object == item.output_object)
            })
            .count()
    }
}

/// One processed image of a batch (`BatchPipelineResultItem`). The output's file name
/// ([`ImageObject::file_name`]) is what ties it to its input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchResultItem {
    pub input_object: ImageObject,
    pub output_object: ImageObject,
}

/// A finished (or progressing) task as a webhook delivers it, or as a poll answers it: an async
/// task or a batch.
#[derive(Debug, Clone)]
pub enum TaskUpdate {
    Async(Box<AsyncTask>),
    Batch(Box<BatchTask>),
}

/// A task as Claid names it: single tasks and batches are numbered on endpoints of their own,
/// so one id may name one of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskRef {
    Async(u64),
    Batch(u64),
}

impl TaskRef {
    pub fn id(self) -> u64 {
        match self {
            TaskRef::Async(id) | TaskRef::Batch(id) => id,
        }
    }
}

impl TaskUpdate {
    /// Which task this is, with its kind.
    pub fn task(&self) -> TaskRef {
        match self {
            TaskUpdate::Async(task) => TaskRef::Async(task.id),
            TaskUpdate::Batch(batch) => TaskRef::Batch(batch.id),
        }
    }

    /// Parses a result object, bare or wrapped in `{"data": …}`. It is a batch when it carries
    /// `results` or its `result_url` is a batch URL, else an async task.
    pub fn parse(body: &[u8]) -> Result<TaskUpdate, serde_json::Error> {
        let mut value: serde_json::Value = serde_json::from_slice(body)?;
        // Bare, or wrapped in `data` (also inside an event envelope with its own `id`, `event`
        // and so on): a task has both an `id` and a `status`.
        let task_like = |v: &serde_json::Value| v.get("id").is_some() && v.get("status").is_some();
        if !task_like(&value)
            && let Some(data) = value.get_mut("data").filter(|data| data.is_object())
        {
            value = data.take();
        }
        // A batch's echoed `input` is a list of URLs or a storage folder `{source, …}`; an
        // async task's is one string (and `result_url` is optional).
        let is_batch = value.get("results").is_some()
            || value
                .get("result_url")
                .and_then(serde_json::Value::as_str)
                .is_some_and(|url| url.contains("/image/edit/batch/"))
            || value
                .get("request")
                .and_then(|request| request.get("input"))
                .is_some_and(|input| input.is_array() || input.is_object());
        if is_batch {
            serde_json::from_value(value).map(|batch| TaskUpdate::Batch(Box::new(batch)))
        } else {
            serde_json::from_value(value).map(|task| TaskUpdate::Async(Box::new(task)))
        }
    }

    pub fn id(&self) -> u64 {
        match self {
            TaskUpdate::Async(task) => task.id,
            TaskUpdate::Batch(batch) => batch.id,
        }
    }

    pub fn status(&self) -> &TaskStatus {
        match self {
            TaskUpdate::Async(task) => &task.status,
            TaskUpdate::Batch(batch) => &batch.status,
        }
    }

    /// The echo of the original submit body.
    pub fn request(&self) -> &serde_json::Value {
        match self {
            TaskUpdate::Async(task) => &task.request,
            TaskUpdate::Batch(batch) => &batch.request,
        }
    }
}

/// `StorageType`: the kinds of storage connector. Unknown values are kept, not rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageType {
    WebFolder,
    S3,
    Gcs,
    #[serde(untagged)]
    Other(String),
}

impl StorageType {
    /// The wire spelling (`s3`, `gcs`, `web_folder`).
    pub fn as_str(&self) -> &str {
        match self {
            StorageType::WebFolder => "web_folder",
            StorageType::S3 => "s3",
            StorageType::Gcs => "gcs",
            StorageType::Other(other) => other,
        }
    }
}

/// `StorageOut` / `StorageOutDetailed`: a connected storage as `GET …/storage/storages` lists it
/// and the single-storage endpoints answer. `parameters.credentials` carries the access key
/// only, never the secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StorageOut {
    pub id: u64,
    /// The connector's name, as in `storage://NAME/path`.
    pub name: String,
    #[serde(rename = "type")]
    pub kind: StorageType,
    #[serde(default, deserialize_with = "null_default")]
    pub parameters: StorageParametersOut,
    #[serde(default, deserialize_with = "null_default")]
    pub created_at: String,
}

/// `CloudBaseStorage` / `CloudDetailedBaseStorage` (s3, gcs) or `WebFolderParameters`, in one
/// tolerant shape: the fields of the other kind are absent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StorageParametersOut {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// Prefix prepended to every request path (`""` for none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<StorageCredentialsOut>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
}

/// `CredentialsOut`: the access key of a cloud storage (the secret is never returned).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StorageCredentialsOut {
    #[serde(default, deserialize_with = "null_default")]
    pub access_key: String,
}

/// `EditResponse` of the sync edit and upload endpoints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EditResponse {
    pub input: ImageObject,
    pub output: ImageObject,
}

/// `HttpErrorDetails`: the error envelope. 429 nests it under `detail` (see [`ErrorBody::parse`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    #[serde(default, deserialize_with = "lenient_string")]
    pub error_code: String,
    #[serde(default, deserialize_with = "lenient_string")]
    pub error_type: String,
    #[serde(deserialize_with = "lenient_string")]
    pub error_message: String,
    #[serde(default, deserialize_with = "lenient_details")]
    pub error_details: BTreeMap<String, Vec<String>>,
}

/// The 429 form: `{"detail": {..envelope..}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NestedErrorBody {
    pub detail: ErrorBody,
}

impl ErrorBody {
    /// Accepts the top-level envelope, the `detail`-wrapped one, and FastAPI's
    /// `{"detail":[{"loc":[..],"msg":..}]}` list (docs/claid-api.md); `None` for anything else.
    pub fn parse(body: &[u8]) -> Option<ErrorBody> {
        if let Ok(err) = serde_json::from_slice::<ErrorBody>(body) {
            return Some(err);
        }
        if let Ok(nested) = serde_json::from_slice::<NestedErrorBody>(body) {
            return Some(nested.detail);
        }
        let value: serde_json::Value = serde_json::from_slice(body).ok()?;
        let Some(items) = value.get("detail").and_then(serde_json::Value::as_array) else {
            return ErrorBody::problem(&value);
        };
        let mut details = BTreeMap::new();
        let mut messages = Vec::new();
        for item in items {
            let loc = item
                .get("loc")
                .and_then(|l| l.as_array())
                .map(|parts| {
                    parts
                        .iter()
                        .map(|p| {
                            p.as_str()
                                .map(str::to_owned)
                                .unwrap_or_else(|| p.to_string())
                        })
                        .collect::<Vec<_>>()
                        .join(".")
                })
                .unwrap_or_default();
            let msg = item
                .get("msg")
                .and_then(|m| m.as_str())
                .unwrap_or("invalid")
                .to_owned();
            messages.push(format!("{loc}: {msg}."));
            details.entry(loc).or_insert_with(Vec::new).push(msg);
        }
        Some(ErrorBody {
            error_code: "9000".to_owned(),
            error_type: "validation".to_owned(),
            error_message: messages.join(" "),
            error_details: details,
        })
    }

    /// A problem document (RFC 9457, `application/problem+json`: `type`, `title`, `status`,
    /// `detail`): its title and detail as the message, its `type` as the code; `None` when it
    /// has neither title nor detail.
    fn problem(value: &serde_json::Value) -> Option<ErrorBody> {
        let text = |key: &str| {
            value
                .get(key)
                .and_then(serde_json::Value::as_str)
                .map(str::trim)
                .filter(|text| !text.is_empty())
        };
        let error_message = match (text("title"), text("detail")) {
            (Some(title), Some(detail)) if !detail.contains(title) => {
                format!("{title}: {detail}")
            }
            (_, Some(detail)) => detail.to_owned(),
            (Some(title), None) => title.to_owned(),
            (None, None) => return None,
        };
        Some(ErrorBody {
            error_code: text("type").unwrap_or_default().to_owned(),
            error_type: "problem".to_owned(),
            error_message,
            error_details: BTreeMap::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status in a message reads as Claid spells it (a failed job said "task ended
    /// Cancelled", Rust's debug form).
    #[test]
    fn a_status_is_shown_as_claid_spells_it() {
        assert_eq!(
            TaskStatus::from("cancelled".to_owned()).to_string(),
            "CANCELLED"
        );
        assert_eq!(TaskStatus::Error.to_string(), "ERROR");
        assert_eq!(
            TaskStatus::from("ARCHIVED".to_owned()).to_string(),
            "ARCHIVED"
        );
    }

    /// Claid's schema requires `id`, `status`, `created_at` and `request` only: a task without
    /// `result_url` parses (it is polled by id), statuses are read in any case, and a webhook
    /// body without `results` or `result_url` is a batch when its echoed `input` is a list.
    #[test]
    fn problem_documents_and_event_envelopes_are_read() {
        let err = ErrorBody::parse(
            br#"{"type":"https://api.claid.ai/problems/conflict","title":"Conflict","status":409,"detail":"The storage name is taken."}"#,
        )
        .expect("a problem document");
        assert_eq!(err.error_message, "Conflict: The storage name is taken.");
        assert_eq!(err.error_code, "https://api.claid.ai/problems/conflict");
        assert!(ErrorBody::parse(br#"{"status":409}"#).is_none());
        let update = TaskUpdate::parse(
            br#"{"id":987654,"event":"task.done","data":{"id":7,"status":"DONE","created_at":"2026-01-01T00:00:00Z","request":{"input":"https://x/a.png"}}}"#,
        )
        .expect("an event envelope");
        assert_eq!((update.id(), update.status()), (7, &TaskStatus::Done));
    }

    /// One result item with a field missing or mistyped leaves that item out; the batch's
    /// other results are read (the whole answer failed to parse, every image of the batch lost
    /// with it).
    #[test]
    fn a_batch_result_item_that_cannot_be_read_leaves_the_others_readable() {
        let image = |name: &str| {
            serde_json::json!({"ext": "jpg", "mps": 0.1, "mime": "image/jpeg", "format": "jpeg",
                "width": 32, "height": 24, "tmp_url": format!("https://r.test/{name}")})
        };
        let batch: BatchTask = serde_json::from_value(serde_json::json!({
            "id": 9, "status": "DONE", "created_at": "t", "request": {"input": []},
            "results": [
                {"input_object": image("a.jpg"), "output_object": image("a.jpg")},
                {"input_object": image("b.jpg"), "output_object": {"width": "wide"}},
                {"input_object": image("c.jpg")},
                {"input_object": image("d.jpg"), "output_object": image("d.jpg")},
            ]
        }))
        .expect("the answer parses");
        let names: Vec<_> = batch
            .results
            .iter()
            .map(|item| item.output_object.tmp_url.clone().unwrap_or_default())
            .collect();
        assert_eq!(names, ["https://r.test/a.jpg", "https://r.test/d.jpg"]);
        assert_eq!(batch.unreadable_results, 2);
        assert!(
            batch.answers_fewer_than(4),
            "the others count as not answered"
        );
        let none: BatchTask = serde_json::from_value(serde_json::json!({
            "id": 9, "status": "DONE", "created_at": "t", "request": {}, "results": null
        }))
        .expect("null results parse");
        assert!(none.results.is_empty());
        let twice: BatchTask = serde_json::from_value(serde_json::json!({
            "id": 9, "status": "DONE", "created_at": "t", "request": {"input": []},
            "results": [
                {"input_object": image("a.jpg"), "output_object": image("a.jpg")},
                {"input_object": image("a.jpg"), "output_object": image("a.jpg")},
            ]
        }))
        .expect("the answer parses");
        assert!(
            twice.answers_fewer_than(2),
            "one object listed twice answers one image"
        );
        assert!(!twice.answers_fewer_than(1));
        assert_eq!(twice.repeated_results(), 1);
    }

    /// A task id written as a whole decimal (`1001.0`) is that id, in task and batch answers;
    /// a fraction is no id.
    #[test]
    fn a_task_id_written_as_a_whole_decimal_is_read() {
        let task = |id: serde_json::Value| {
            serde_json::from_value::<AsyncTask>(serde_json::json!({
                "id": id, "status": "PROCESSING", "created_at": "t", "request": {}
            }))
        };
        assert_eq!(task(serde_json::json!(1001.0)).expect("whole").id, 1001);
        assert_eq!(task(serde_json::json!(1001)).expect("integer").id, 1001);
        assert!(task(serde_json::json!(1001.5)).is_err());
        assert!(task(serde_json::json!(-1.0)).is_err());
        let batch: BatchTask = serde_json::from_value(serde_json::json!({
            "id": 7.0, "status": "PROCESSING", "created_at": "t", "request": {"input": []}
        }))
        .expect("whole");
        assert_eq!(batch.id, 7);
    }

    /// JSON Schema's integers include `8.0`; an input description the daemon does not use
    /// may be incomplete. Neither makes a billed result unreadable; a pixel count that is no
    /// number still does.
    #[test]
    fn results_with_decimal_pixel_counts_or_a_bare_input_object_are_read() {
        let task: AsyncTask = serde_json::from_value(serde_json::json!({
            "id": 3, "status": "DONE", "created_at": "t", "request": {},
            "result": {"input_object": {},
                "output_object": {"ext": "jpg", "mps": 1, "mime": "image/jpeg", "format": "jpeg",
                    "width": 8.0, "height": 6.0, "tmp_url": "https://r.test/a.jpg"}}
        }))
        .expect("the answer parses");
        let output = task.result.output_object.expect("the output");
        assert_eq!((output.width, output.height), (8, 6));
        assert_eq!(output.file_name().as_deref(), Some("a.jpg"));
        let batch: BatchTask = serde_json::from_value(serde_json::json!({
            "id": 9, "status": "DONE", "created_at": "t", "request": {"input": []},
            "results": [
                {"input_object": {"width": 10.0}, "output_object": {"width": 8.0, "height": 8,
                    "tmp_url": "https://r.test/b.jpg"}},
                {"input_object": {}, "output_object": {"width": 8.5, "tmp_url": "https://r.test/c.jpg"}},
            ]
        }))
        .expect("the answer parses");
        assert_eq!(batch.results.len(), 1, "{:?}", batch.results);
        assert_eq!(batch.results[0].output_object.width, 8);
        assert_eq!(batch.unreadable_results, 1, "8.5 is no pixel count");
    }

    /// Fields the daemon does not use, sent as `null` or another type than the schema's
    /// (`mps`, `format`, `created_at` as a number, plain messages in `errors`), never make a
    /// billed result or a submit's answer unreadable (each poll of such a DONE answer failed
    /// until `give_up_after`, and the result was lost).
    #[test]
    fn unused_fields_of_any_type_leave_the_answer_readable() {
        let task: AsyncTask = serde_json::from_value(serde_json::json!({
            "id": 3, "status": "DONE", "created_at": 1_765_000_000, "request": {},
            "errors": ["a warning", {"error": "another", "created_at": 5}],
            "result": {"output_object": {"ext": null, "mps": null, "mime": 7, "format": "jpeg",
                "width": 8, "height": 6, "tmp_url": "https://r.test/a.jpg"}}
        }))
        .expect("the answer parses");
        assert_eq!(task.created_at, "1765000000");
        let errors: Vec<&str> = task.errors.iter().map(|e| e.error.as_str()).collect();
        assert_eq!(errors, ["a warning", "another"]);
        let output = task.result.output_object.expect("the output");
        assert_eq!(output.tmp_url.as_deref(), Some("https://r.test/a.jpg"));
        let output: ImageObject =
            serde_json::from_value(serde_json::json!({"mps": "0.5", "width": 1, "height": 1}))
                .expect("parses");
        assert!((output.mps - 0.5).abs() < f64::EPSILON);
        let batch: BatchTask = serde_json::from_value(serde_json::json!({
            "id": 9, "status": "ACCEPTED", "created_at": 1_765_000_000, "request": {},
            "errors": "one message"
        }))
        .expect("the answer parses");
        assert_eq!(batch.errors.len(), 1);
        assert_eq!(batch.errors[0].error, "one message");
        // A DONE batch whose only `errors` are plain messages has answered for no image yet.
        let done: BatchTask = serde_json::from_value(serde_json::json!({
            "id": 9, "status": "DONE", "errors": ["a warning"]
        }))
        .expect("the answer parses");
        assert!(done.lacks_result() && done.answers_fewer_than(1));
    }

    #[test]
    fn tasks_parse_without_result_url_and_statuses_in_any_case() {
        let task: AsyncTask = serde_json::from_value(serde_json::json!({
            "id": 3, "status": "done", "created_at": "t", "request": {"input": "http://h/a.png"}
        }))
        .expect("parses");
        assert_eq!(
            (task.status, task.result_url.as_str()),
            (TaskStatus::Done, "")
        );
        for (text, status) in [
            ("Processing", TaskStatus::Processing),
            ("CANCELED", TaskStatus::Cancelled),
            ("error", TaskStatus::Error),
            ("QUEUED", TaskStatus::Other("QUEUED".into())),
        ] {
            let parsed: TaskStatus = serde_json::from_value(serde_json::json!(text)).unwrap();
            assert_eq!(parsed, status, "{text}");
        }
        assert_eq!(
            serde_json::to_value(TaskStatus::Done).unwrap(),
            serde_json::json!("DONE")
        );
        let batch = br#"{"id": 4, "status": "DONE", "request": {"input": ["http://h/a.png"]}}"#;
        assert!(matches!(TaskUpdate::parse(batch), Ok(TaskUpdate::Batch(_))));
        let single =
            br#"{"data": {"id": 5, "status": "DONE", "request": {"input": "http://h/a.png"}}}"#;
        assert!(matches!(
            TaskUpdate::parse(single),
            Ok(TaskUpdate::Async(_))
        ));
    }

    #[test]
    fn batch_input_takes_all_four_shapes() {
        let parse = |v: serde_json::Value| -> BatchInput {
            serde_json::from_value(v).expect("batch input parses")
        };
        let list = parse(serde_json::json!(["http://h/a.png", "http://h/b.png"]));
        assert_eq!(list.urls(), Some(vec!["http://h/a.png", "http://h/b.png"]));
        let one = parse(serde_json::json!("http://h/a.png"));
        assert_eq!(one.urls(), Some(vec!["http://h/a.png"]));
        let folder = parse(serde_json::json!("storage://s/folder/"));
        assert!(folder.is_folder() && folder.urls().is_none());
        let source = parse(serde_json::json!({"source": "storage://s/f/", "recursive": true}));
        assert_eq!(
            source,
            BatchInput::Source(BatchSource {
                source: "storage://s/f/".to_owned(),
                recursive: true
            })
        );
        let defaulted = parse(serde_json::json!({"source": "storage://s/f/"}));
        assert!(matches!(
            defaulted,
            BatchInput::Source(BatchSource {
                recursive: false,
                ..
            })
        ));
        // Serialized the way Claid spells it.
        assert_eq!(
            serde_json::to_value(&list).expect("serializes"),
            serde_json::json!(["http://h/a.png", "http://h/b.png"])
        );
    }

    #[test]
    fn batch_result_parses_tolerantly() {
        let body = serde_json::json!({"data": {
            "id": 7, "status": "DONE", "created_at": "2024-01-01T00:00:00Z",
            "request": {"input": ["http://h/a.png"], "operations": {}},
            "something_new": 1,
            "errors": [
                {"error": "b.png: cannot decode", "created_at": "x"},
                {"error": "c.png: odd", "created_at": "x", "input_object": {"ext": "png"}},
                {"error": "d.png: too large", "created_at": "x", "input_object":
                    {"ext": "png", "mps": 1.0, "mime": "image/png", "format": "png", "width": 1000, "height": 1000}}
            ],
            "results": [{"input_object": {"ext": "png", "mps": 0.01, "mime": "image/png", "format": "png", "width": 100, "height": 100},
                         "output_object": {"ext": "jpg", "mps": 0.01, "mime": "image/jpeg", "format": "jpeg", "width": 100, "height": 100,
                                           "tmp_url": "https://x/tmp/a.jpg?sig=1", "gcs_key": "k", "gcs_bucket": "b"}}]
        }});
        let parsed: Envelope<BatchTask> = serde_json::from_value(body).expect("parses");
        let batch = parsed.data;
        assert_eq!((batch.id, batch.status.clone()), (7, TaskStatus::Done));
        assert_eq!(batch.result_url, "");
        assert_eq!(batch.errors.len(), 3);
        assert!(batch.errors[0].input_object.is_none());
        assert_eq!(
            batch.errors[1]
                .input_object
                .as_ref()
                .map(|o| o.ext.as_str()),
            Some("png"),
            "an incomplete object is read for what it says"
        );
        assert_eq!(
            batch.errors[2].input_object.as_ref().map(|o| o.width),
            Some(1000)
        );
        assert_eq!(
            batch.results[0].output_object.file_name().as_deref(),
            Some("a.jpg")
        );
        // A GCS output named only by its key in the bucket, and a name percent-encoded.
        let gcs: ImageObject = serde_json::from_value(serde_json::json!({
            "ext": "png", "mps": 0.01, "mime": "image/png", "format": "png", "width": 1,
            "height": 1, "gcs_key": "raw/out/m/d1.png", "gcs_bucket": "gcat"
        }))
        .expect("a gcs object");
        assert_eq!(gcs.file_name().as_deref(), Some("d1.png"));
        assert_eq!(gcs.bucket_key(), Some("raw/out/m/d1.png"));
        assert_eq!(decoded("caf%C3%A9-1.png"), "café-1.png");
        let accepted: BatchTask =
            serde_json::from_value(serde_json::json!({"id": 8, "status": "ACCEPTED"}))
                .expect("minimal accepted parses");
        assert!(accepted.results.is_empty() && accepted.errors.is_empty());
    }

    #[test]
    fn output_names_follow_the_input_basename() {
        assert_eq!(
            batch_output_name("http://h/p/sku-1.png", "jpg"),
            "sku-1.jpg"
        );
        assert_eq!(
            batch_output_name("storage://demo/a.b-8x8.png", "webp"),
            "a.b-8x8.webp"
        );
        assert_eq!(
            batch_output_name("http://h/p/noext?x=1.png", "png"),
            "noext.png"
        );
        assert_eq!(batch_output_name("http://h/", "jpg"), "image.jpg");
        assert_eq!(batch_output_name("http://h", "jpg"), "image.jpg");
        assert_eq!(basename("http://h/dir/f.png#frag"), "f.png");
        assert_eq!(basename("folder/key.jpg"), "key.jpg");
    }

    #[test]
    fn storages_parse_tolerantly_and_keep_unknown_types() {
        let body = serde_json::json!({"data": [
            {"id": 1, "name": "catalog", "type": "s3", "created_at": "2024-01-01T00:00:00Z",
             "parameters": {"bucket": "b", "path": "raw", "credentials": {"access_key": "AK"}}},
            {"id": 2, "name": "site", "type": "web_folder", "created_at": "x",
             "parameters": {"base_url": "https://cdn.example/"}},
            {"id": 3, "name": "new", "type": "azure", "parameters": {}, "extra": true}
        ]});
        let parsed: Envelope<Vec<StorageOut>> = serde_json::from_value(body).expect("parses");
        let [s3, web, other] = &parsed.data[..] else {
            panic!("three storages: {:?}", parsed.data);
        };
        assert_eq!(
            (s3.kind.as_str(), s3.parameters.path.as_deref()),
            ("s3", Some("raw"))
        );
        assert_eq!(
            s3.parameters
                .credentials
                .as_ref()
                .map(|c| c.access_key.as_str()),
            Some("AK")
        );
        assert_eq!(web.kind, StorageType::WebFolder);
        assert_eq!(other.kind, StorageType::Other("azure".to_owned()));
        assert_eq!(
            serde_json::to_value(&web.kind).expect("serializes"),
            serde_json::json!("web_folder")
        );
    }

    #[test]
    fn task_updates_are_told_apart_bare_or_wrapped() {
        let task = serde_json::json!({"id": 1, "status": "DONE", "result_url": "http://h/v1/image/edit/async/1",
            "request": {"input": "http://h/a.png", "operations": {}}, "result": {}});
        let batch = serde_json::json!({"id": 2, "status": "ERROR", "result_url": "http://h/v1/image/edit/batch/2",
            "request": {"input": ["http://h/a.png"], "operations": {}}});
        for (value, want_batch, id) in [
            (task.clone(), false, 1),
            (serde_json::json!({ "data": task }), false, 1),
            (batch.clone(), true, 2),
            (serde_json::json!({ "data": batch }), true, 2),
        ] {
            let bytes = serde_json::to_vec(&value).expect("serializes");
            let update = TaskUpdate::parse(&bytes).expect("parses");
            assert_eq!(
                matches!(update, TaskUpdate::Batch(_)),
                want_batch,
                "{value}"
            );
            assert_eq!(update.id(), id);
            assert!(update.status().is_terminal());
            assert!(update.request().get("operations").is_some());
        }
        assert!(TaskUpdate::parse(b"{\"data\": 5}").is_err());
    }
}
