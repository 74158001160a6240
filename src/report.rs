//! Per-manifest reports (`<name>.report.json` and `.report.csv`, SPEC §5.5), written atomically
//! next to the manifest's output folder in the outbox.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::output::{self, OutputError};
use crate::store::records::{JobState, JobV1, ManifestV1};

/// Header of the CSV report, in column order.
pub const CSV_HEADER: [&str; 9] = [
    "input", "output", "status", "reason", "task_id", "width", "height", "bytes", "in_doubt",
];

/// One image of a manifest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ReportRow {
    /// The input as written in the manifest (URL or inbox-relative path).
    pub input: String,
    /// Output path relative to the outbox.
    pub output: String,
    /// `done`, `unchanged`, `failed`, `queued`, …
    pub status: String,
    /// Failure code and message, empty when fine.
    pub reason: String,
    /// Claid's task id, for support requests.
    pub task_id: Option<u64>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub bytes: Option<u64>,
    /// How often the job's submit may have been duplicated by a crash.
    pub in_doubt: u32,
}

/// The report of one manifest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Inbox-relative manifest path.
    pub manifest: String,
    /// Hex SHA-256 of the manifest bytes, to tie the report to one version of the file.
    pub sha256: String,
    /// RFC 3339 time of generation.
    pub generated_at: String,
    /// Number of jobs per status.
    pub counts: BTreeMap<String, u64>,
    /// Sum of the rows' `in_doubt`.
    pub in_doubt: u64,
    /// One row per image, in manifest order.
    pub jobs: Vec<ReportRow>,
}

/// Builds a manifest's report from its jobs (in manifest order). `generated_at` is RFC 3339,
/// e.g. from [`now_rfc3339`].
pub fn build(manifest: &ManifestV1, jobs: &[JobV1], generated_at: String) -> Report {
    let rows: Vec<ReportRow> = jobs.iter().map(row).collect();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for r in &rows {
        *counts.entry(r.status.clone()).or_default() += 1;
    }
    Report {
        manifest: manifest.rel.clone(),
        sha256: manifest.sha256.clone(),
        generated_at,
        counts,
        in_doubt: rows.iter().map(|r| u64::from(r.in_doubt)).sum(),
        jobs: rows,
    }
}

/// The report row of one job. Status is the state kind, except `unchanged` for a job done
/// without an API call and `in-doubt` (with a hint) for a held job; `reason` is
/// `<code>: <message>` for failed jobs.
pub fn row(job: &JobV1) -> ReportRow {
    let mut row = ReportRow {
        input: job.input.clone(),
        output: job.output_rel.clone(),
        status: job.state.kind().to_owned(),
        reason: String::new(),
        task_id: None,
        width: None,
        height: None,
        bytes: None,
        in_doubt: job.in_doubt,
    };
    match &job.state {
        JobState::Submitted { task_id, .. } => row.task_id = Some(*task_id),
        JobState::Downloading { task_id, .. } => row.task_id = *task_id,
        JobState::Done {
            bytes,
            width,
            height,
            task_id,
            unchanged,
            ..
        } => {
            if *unchanged {
                row.status = "unchanged".to_owned();
            }
            row.task_id = *task_id;
            row.width = Some(*width);
            row.height = Some(*height);
            row.bytes = Some(*bytes);
        }
        JobState::Failed { code, message, .. } => row.reason = format!("{code}: {message}"),
        JobState::InDoubt { .. } => {
            row.status = "in-doubt".to_owned();
            row.reason =
                "in-doubt: the submit may have reached Claid; see `replay --in-doubt`".to_owned();
        }
        JobState::Queued | JobState::Submitting { .. } => {}
    }
    row
}

/// The current time as RFC 3339 (UTC, seconds).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// The JSON and CSV report paths of a manifest: `a/b/shoes.yaml` →
/// `<outbox>/a/b/shoes.report.json` and `<outbox>/a/b/shoes.report.csv`.
pub fn paths(outbox: &Path, manifest_rel: &Path) -> (PathBuf, PathBuf) {
    let (json_rel, csv_rel) = rel_paths(manifest_rel);
    (outbox.join(json_rel), outbox.join(csv_rel))
}

/// Writes both reports atomically; returns their paths (JSON, CSV).
pub fn write(
    outbox: &Path,
    manifest_rel: &Path,
    report: &Report,
) -> Result<(PathBuf, PathBuf), OutputError> {
    let (json_rel, csv_rel) = rel_paths(manifest_rel);
    let json_path = output::safe_join(outbox, &json_rel)?;
    let csv_path = output::safe_join(outbox, &csv_rel)?;
    let mut json = serde_json::to_string_pretty(report).map_err(|err| OutputError::Io {
        path: json_path.clone(),
        source: err.into(),
    })?;
    json.push('\n');
    let csv = to_csv(report).map_err(|source| OutputError::Io {
        path: csv_path.clone(),
        source,
    })?;
    output::write_text_atomic(&json_path, &json)?;
    output::write_text_atomic(&csv_path, &csv)?;
    Ok((json_path, csv_path))
}

/// The CSV text of a report (header plus one row per job; RFC 4180 quoting).
pub fn to_csv(report: &Report) -> std::io::Result<String> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(CSV_HEADER)?;
    let opt = |v: Option<String>| v.unwrap_or_default();
    for row in &report.jobs {
        writer.write_record([
            row.input.clone(),
            row.output.clone(),
            row.status.clone(),
            row.reason.clone(),
            opt(row.task_id.map(|v| v.to_string())),
            opt(row.width.map(|v| v.to_string())),
            opt(row.height.map(|v| v.to_string())),
            opt(row.bytes.map(|v| v.to_string())),
            row.in_doubt.to_string(),
        ])?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|err| std::io::Error::other(err.to_string()))?;
    String::from_utf8(bytes).map_err(std::io::Error::other)
}

fn rel_paths(manifest_rel: &Path) -> (PathBuf, PathBuf) {
    let stem = manifest_rel
        .file_stem()
        .map(|s| s.to_os_string())
        .unwrap_or_else(|| OsString::from("manifest"));
    let dir = manifest_rel.parent().unwrap_or(Path::new(""));
    let with = |suffix: &str| {
        let mut name = stem.clone();
        name.push(suffix);
        dir.join(name)
    };
    (with(".report.json"), with(".report.csv"))
}
