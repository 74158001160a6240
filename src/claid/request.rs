//! The edit request schema of CONTRACT.md §4 (`EditRequest` = `AsyncEditRequest`, and the
//! `data` part of an upload): typed operations and output options, and validation of a JSON
//! body against the contract's enums and ranges, reporting every problem by dotted field path.
//! Shared by the manifest validator (before any spend) and the emulator (422 responses).

use serde::Serialize;

/// One validation problem: `path` is the dotted field path (`operations.resizing.width`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

/// Whether the body must carry `input` (sync/async edits) or must not (the upload `data` part).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputRule {
    Required,
    Forbidden,
}

/// Output image formats (`FormatEnum`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    Jpeg,
    Png,
    Webp,
    Avif,
    Tiff,
}

impl OutputFormat {
    /// File extension used for default output names.
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "jpg",
            OutputFormat::Png => "png",
            OutputFormat::Webp => "webp",
            OutputFormat::Avif => "avif",
            OutputFormat::Tiff => "tiff",
        }
    }
}

/// A validated edit request. STUB: filled in by the emulator/schema work.
#[derive(Debug, Clone)]
pub struct EditRequest {
    pub input: Option<String>,
}

impl EditRequest {
    /// The output format the request asks for (`jpeg` when `output` is absent).
    pub fn output_format(&self) -> OutputFormat {
        OutputFormat::Jpeg
    }
}

/// Validates `body` against the contract and returns the typed request, or every problem found.
pub fn validate(body: &serde_json::Value, input: InputRule) -> Result<EditRequest, Vec<FieldError>> {
    let _ = input;
    Ok(EditRequest {
        input: body.get("input").and_then(|v| v.as_str()).map(str::to_owned),
    })
}
