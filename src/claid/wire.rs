//! Wire types of the Claid API (CONTRACT.md §6 and §8): the `data` envelope, async task
//! records, image objects and the error envelope. Shared by the client and the emulator; kept
//! separate from domain and stored types and converted by hand at the boundary.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Every 2xx JSON body is `{"data": <payload>}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub data: T,
}

/// Status of an async task. Unknown values are kept, not rejected (CONTRACT §7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
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
    pub id: u64,
    pub status: TaskStatus,
    pub result_url: String,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub request: serde_json::Value,
    #[serde(default)]
    pub errors: Vec<TaskError>,
    #[serde(default)]
    pub result: TaskResult,
}

/// One entry of `errors` (`BatchPipelineError`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskError {
    pub error: String,
    #[serde(default)]
    pub created_at: String,
}

/// `result`: `{}` until DONE, then both objects.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TaskResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_object: Option<ImageObject>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_object: Option<ImageObject>,
}

/// `PipelineInputObject` / `PipelineOutputObject`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageObject {
    pub ext: String,
    pub mps: f64,
    pub mime: String,
    pub format: String,
    pub width: u32,
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
    pub error_code: String,
    pub error_type: String,
    pub error_message: String,
    #[serde(default)]
    pub error_details: BTreeMap<String, Vec<String>>,
}

/// The 429 form: `{"detail": {..envelope..}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NestedErrorBody {
    pub detail: ErrorBody,
}

impl ErrorBody {
    /// Accepts the top-level envelope, the `detail`-wrapped one, and FastAPI's
    /// `{"detail":[{"loc":[..],"msg":..}]}` list (CONTRACT §8); `None` for anything else.
    pub fn parse(body: &[u8]) -> Option<ErrorBody> {
        if let Ok(err) = serde_json::from_slice::<ErrorBody>(body) {
            return Some(err);
        }
        if let Ok(nested) = serde_json::from_slice::<NestedErrorBody>(body) {
            return Some(nested.detail);
        }
        let value: serde_json::Value = serde_json::from_slice(body).ok()?;
        let items = value.get("detail")?.as_array()?;
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
}
