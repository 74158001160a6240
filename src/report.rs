//! Per-manifest reports (`<name>.report.json` and `.report.csv`, README "How it works"), written atomically
//! next to the manifest's output folder in the outbox.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::filename;
use crate::output::{self, OutputError};
use crate::store::records::{JobState, JobV1, ManifestV1};

/// Header of the CSV report, in column order.
/// (`batch_images` came last, after `object`, so that readers by position keep working.)
pub const CSV_HEADER: [&str; 12] = [
    "input",
    "output",
    "status",
    "reason",
    "task_id",
    "width",
    "height",
    "bytes",
    "in_doubt",
    "batch_id",
    "object",
    "batch_images",
];

/// One image of a manifest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ReportRow {
    /// The input as written in the manifest (URL or inbox-relative path).
    pub input: String,
    /// Output path relative to the outbox.
    pub output: String,
    /// `done`, `unchanged`, `skipped`, `failed`, `superseded`, `queued`, …
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
    /// The Claid batch the image went in, when it went in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<u64>,
    /// How many images the daemon sent in that batch (the size it chose, `/status` shows the
    /// recent ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_images: Option<u32>,
    /// A storage output: the object Claid writes (`storage://CONNECTOR/folder/a/sku-1.jpg`);
    /// nothing is downloaded unless the storage keeps a local copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
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
    let mut tally = Tally::default();
    rows.iter().for_each(|r| tally.add(r));
    Report {
        manifest: manifest.rel.clone(),
        sha256: manifest.sha256.clone(),
        generated_at,
        counts: tally.counts,
        in_doubt: tally.in_doubt,
        jobs: rows,
    }
}

/// The report row of one job. Status is the state kind, except `unchanged` for a job done
/// without an API call, `superseded` for a job a newer version of its manifest took over
/// (failed in the store, with that code, but nothing went wrong) and `in-doubt` (with a hint)
/// for a held job; `reason` is `<code>: <message>` for failed and superseded jobs.
pub fn row(job: &JobV1) -> ReportRow {
    let mut row = ReportRow {
        // Without the credentials a URL may carry (`user:password@`, a signed query): the
        // outbox is shared more widely than the inbox (they were written in clear, while the
        // log, `jobs` and `status` redacted them: acceptance run).
        input: crate::text::redact_credentials(&job.input).into_owned(),
        output: job.output_rel.clone(),
        status: job.state.kind().to_owned(),
        reason: String::new(),
        task_id: None,
        width: None,
        height: None,
        bytes: None,
        in_doubt: job.in_doubt,
        batch_id: job.batch,
        batch_images: job.batch.and(job.batch_images),
        // Only an object that was written (and checked) is listed.
        object: match &job.state {
            // A local file kept by `skip` (`output_local_copy`, no object at the key): no
            // object was written, and none is listed.
            JobState::Done {
                path,
                skipped: true,
                ..
            } if !path.contains("://") => None,
            JobState::Done { path, .. } => {
                crate::storages::destination_of(&job.body, &job.output_rel)
                    .map(|expected| checked_name(expected, path))
            }
            _ => None,
        },
    };
    row.task_id = job.state.task_id();
    match &job.state {
        JobState::Done {
            bytes,
            width,
            height,
            unchanged,
            skipped,
            ..
        } => {
            if *unchanged {
                row.status = "unchanged".to_owned();
            }
            if *skipped {
                row.status = "skipped".to_owned();
            }
            row.width = Some(*width);
            row.height = Some(*height);
            row.bytes = Some(*bytes);
        }
        JobState::Failed { code, message, .. } => {
            if *code == crate::codes::FailureCode::Superseded {
                row.status = "superseded".to_owned();
            }
            // Claid's message may quote the input's URL, credentials and all.
            row.reason = crate::text::redact_urls_in(&format!("{code}: {message}")).into_owned();
        }
        JobState::InDoubt { .. } => {
            // Quotes Claid's words, which may quote the input's URL.
            row.reason = in_doubt_reason(job)
                .map(|reason| crate::text::redact_urls_in(&reason).into_owned())
                .unwrap_or_default();
        }
        JobState::Queued
        | JobState::Submitting { .. }
        | JobState::Submitted { .. }
        | JobState::Downloading { .. } => {}
    }
    row
}

/// Why a job held in doubt is held, as its report row and `jobs` say it; `None` for a job in
/// another state.
pub fn in_doubt_reason(job: &JobV1) -> Option<String> {
    let JobState::InDoubt { claid_said, .. } = &job.state else {
        return None;
    };
    Some(match job.batch {
        // Only a batch result that could not be matched holds a job whose batch id is
        // known: the batch surely ran.
        Some(batch) => format!(
            "in-doubt: batch {batch} ran at Claid (it may have billed this image), but none of its results could be matched to this image alone{}; see `replay --in-doubt`",
            claid_said
                .as_deref()
                .map_or_else(String::new, |said| format!(
                    " (Claid's errors for images it did not name: {said})"
                ))
        ),
        None => "in-doubt: the submit may have reached Claid; see `replay --in-doubt`".to_owned(),
    })
}

/// The current time as RFC 3339 (UTC, seconds).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// The JSON and CSV report paths of a manifest: `a/b/shoes.yaml` →
/// `<outbox>/a/b/shoes.report.json` and `<outbox>/a/b/shoes.report.csv` (a stem too long for
/// the outbox's `NAME_MAX` is shortened with a hash: `filename::report_names`).
pub fn paths(outbox: &Path, manifest_rel: &Path) -> (PathBuf, PathBuf) {
    let (json_rel, csv_rel) = rel_paths(outbox, manifest_rel);
    (outbox.join(json_rel), outbox.join(csv_rel))
}

/// Writes both reports atomically; returns their paths (JSON, CSV).
pub fn write(
    outbox: &Path,
    manifest_rel: &Path,
    report: &Report,
) -> Result<(PathBuf, PathBuf), OutputError> {
    let header = Header {
        manifest: &report.manifest,
        sha256: &report.sha256,
        generated_at: &report.generated_at,
        counts: &report.counts,
        in_doubt: report.in_doubt,
    };
    write_streamed(outbox, manifest_rel, &header, |emit| {
        report.jobs.iter().try_for_each(|row| emit(row.clone()))
    })
}

/// Hands every row of a report, in order, to the sink it is given (see [`write_streamed`]).
pub type RowSource<'a> = dyn Fn(&mut dyn FnMut(ReportRow) -> io::Result<()>) -> io::Result<()> + 'a;

/// Everything of a report but its rows.
pub struct Header<'a> {
    pub manifest: &'a str,
    pub sha256: &'a str,
    pub generated_at: &'a str,
    pub counts: &'a BTreeMap<String, u64>,
    pub in_doubt: u64,
}

/// Totals of a manifest's rows, gathered in one pass before the report is written.
#[derive(Default, Debug)]
pub struct Tally {
    pub counts: BTreeMap<String, u64>,
    /// Sum of the rows' `in_doubt` counters (submits that may have been duplicated).
    pub in_doubt: u64,
    /// Rows held in doubt now.
    pub in_doubt_held: u64,
    /// The reason of the first failed row.
    pub first_failure: Option<String>,
}

impl Tally {
    pub fn add(&mut self, row: &ReportRow) {
        *self.counts.entry(row.status.clone()).or_default() += 1;
        self.in_doubt += u64::from(row.in_doubt);
        self.in_doubt_held += u64::from(row.status == "in-doubt");
        if self.first_failure.is_none() && row.status == "failed" {
            self.first_failure = Some(row.reason.clone());
        }
    }
}

/// Writes both reports atomically, streaming the rows: `rows` is called once per file and
/// must hand every row, in order, to the `emit` it gets. Memory stays flat in the number of
/// rows (a 100,000-image manifest's report is never held whole). Returns (JSON, CSV) paths.
pub fn write_streamed(
    outbox: &Path,
    manifest_rel: &Path,
    header: &Header<'_>,
    rows: impl Fn(&mut dyn FnMut(ReportRow) -> io::Result<()>) -> io::Result<()>,
) -> Result<(PathBuf, PathBuf), OutputError> {
    write_streamed_to(outbox, rel_paths(outbox, manifest_rel), header, rows)
}

/// [`write_streamed`] to the outbox-relative paths `(json_rel, csv_rel)`.
pub fn write_streamed_to(
    outbox: &Path,
    (json_rel, csv_rel): (PathBuf, PathBuf),
    header: &Header<'_>,
    rows: impl Fn(&mut dyn FnMut(ReportRow) -> io::Result<()>) -> io::Result<()>,
) -> Result<(PathBuf, PathBuf), OutputError> {
    let json_path = output::safe_join(outbox, &json_rel)?;
    let csv_path = output::safe_join(outbox, &csv_rel)?;
    output::write_atomic_with(&json_path, |w| write_json(w, header, &rows))?;
    output::write_atomic_with(&csv_path, |w| write_csv(w, &rows))?;
    Ok((json_path, csv_path))
}

/// Removes the report of content `sha256` that an earlier write left at `(json_rel, csv_rel)`
/// under `archive` (where a report goes when the outbox takes none), once the outbox holds a
/// report of that content again (a replay ended the run anew, or the same content was dropped
/// again): left there, it told the old outcome ("2 failed") beside a manifest whose images
/// were all delivered since. A report of other content there is another run's only one: kept.
/// Returns the JSON report removed.
pub fn remove_archived_fallback(
    archive: &Path,
    (json_rel, csv_rel): (&Path, &Path),
    sha256: &str,
) -> Option<PathBuf> {
    let json = output::safe_join(archive, json_rel).ok()?;
    let csv = output::safe_join(archive, csv_rel).ok()?;
    // The header comes first, pretty-printed: `"sha256"` after a line break and two spaces
    // can only be its key (a line break inside a string is escaped). The manifest's path
    // before it is at most 4 KiB, escaped up to six bytes a byte.
    // Opened without blocking (a FIFO put there) and read only as a regular file.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(&json)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut head = Vec::new();
    io::Read::read_to_end(&mut io::Read::take(file, 32 * 1024), &mut head).ok()?;
    let key = format!("\n  \"sha256\": \"{sha256}\"");
    if !head.windows(key.len()).any(|w| w == key.as_bytes()) {
        return None;
    }
    std::fs::remove_file(&json).ok()?;
    let _ = std::fs::remove_file(&csv);
    Some(json)
}

/// The object a storage output's row names: the expected `storage://` URI, with the name of
/// the object that was checked in the bucket (`checked`, its `s3://`/`gs://` URI) when Claid
/// wrote it under the same stem with another extension (`f1.tif` for `f1.tiff`).
fn checked_name(expected: String, checked: &str) -> String {
    let name = |uri: &str| uri.rsplit('/').next().unwrap_or_default().to_owned();
    let stem = |name: &str| {
        name.rsplit_once('.')
            .map_or(name.to_owned(), |(s, _)| s.to_owned())
    };
    if !(checked.starts_with("s3://") || checked.starts_with("gs://")) {
        return expected;
    }
    let (want, got) = (name(&expected), name(checked));
    if got.is_empty() || got == want || stem(&got) != stem(&want) {
        return expected;
    }
    match expected.rsplit_once('/') {
        Some((folder, _)) => format!("{folder}/{got}"),
        None => expected,
    }
}

/// The JSON of [`Report`] (same fields, same order), with `jobs` streamed.
fn write_json(w: &mut dyn Write, header: &Header<'_>, rows: &RowSource<'_>) -> io::Result<()> {
    use serde::ser::{SerializeSeq as _, SerializeStruct, Serializer as _};

    /// `jobs`: a sequence whose elements come from `rows`.
    struct Rows<'r>(&'r RowSource<'r>);

    impl Serialize for Rows<'_> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut seq = serializer.serialize_seq(None)?;
            (self.0)(&mut |row| {
                seq.serialize_element(&row)
                    .map_err(|err| io::Error::other(err.to_string()))
            })
            .map_err(serde::ser::Error::custom)?;
            seq.end()
        }
    }

    let mut ser = serde_json::Serializer::pretty(&mut *w);
    // serde_json's errors convert into io::Error (keeping the writer's own I/O errors).
    let mut map = ser.serialize_struct("Report", 6)?;
    map.serialize_field("manifest", header.manifest)?;
    map.serialize_field("sha256", header.sha256)?;
    map.serialize_field("generated_at", header.generated_at)?;
    map.serialize_field("counts", header.counts)?;
    map.serialize_field("in_doubt", &header.in_doubt)?;
    map.serialize_field("jobs", &Rows(rows))?;
    SerializeStruct::end(map)?;
    w.write_all(b"\n")
}

/// The CSV text of a report (header plus one row per job; RFC 4180 quoting).
pub fn to_csv(report: &Report) -> io::Result<String> {
    let mut out = Vec::new();
    write_csv(&mut out, &|emit: &mut dyn FnMut(
        ReportRow,
    ) -> io::Result<()>| {
        report.jobs.iter().try_for_each(|row| emit(row.clone()))
    })?;
    String::from_utf8(out).map_err(io::Error::other)
}

fn write_csv(w: &mut dyn Write, rows: &RowSource<'_>) -> io::Result<()> {
    let mut writer = csv::Writer::from_writer(w);
    writer.write_record(CSV_HEADER)?;
    let opt = |v: Option<String>| v.unwrap_or_default();
    rows(&mut |row| {
        writer
            .write_record([
                spreadsheet_safe(row.input),
                spreadsheet_safe(row.output),
                row.status,
                // Claid's words may hold raw control characters (ESC): escaped, as the log
                // shows them, so a `cat` of the file cannot drive the terminal. (A newline stays:
                // a quoted CSV field holds it, and a reader gets the text back.)
                spreadsheet_safe(terminal_safe(row.reason)),
                opt(row.task_id.map(|v| v.to_string())),
                opt(row.width.map(|v| v.to_string())),
                opt(row.height.map(|v| v.to_string())),
                opt(row.bytes.map(|v| v.to_string())),
                row.in_doubt.to_string(),
                opt(row.batch_id.map(|v| v.to_string())),
                opt(row.object),
                opt(row.batch_images.map(|v| v.to_string())),
            ])
            .map_err(io::Error::from)
    })?;
    writer.flush()
}

/// `text` with every unsafe character but the newline escaped ([`crate::text::unsafe_escaped`]
/// line by line).
fn terminal_safe(text: String) -> String {
    if !text
        .chars()
        .any(|c| c != '\n' && crate::text::is_unsafe_char(c))
    {
        return text;
    }
    text.split('\n')
        .map(|line| crate::text::unsafe_escaped(line.to_owned()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A cell a spreadsheet would run as a formula (a file named `=HYPERLINK(…).png` dropped in
/// the inbox, a message of Claid's) starts with `'`, which spreadsheets show as text (OWASP's
/// advice for CSV injection); any other cell is as it is.
fn spreadsheet_safe(cell: String) -> String {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{cell}")
    } else {
        cell
    }
}

/// `filename::report_names`, for the outbox's filesystem: a stem too long for the suffix is
/// shortened with a hash.
pub fn rel_paths(outbox: &Path, manifest_rel: &Path) -> (PathBuf, PathBuf) {
    rel_paths_tagged(outbox, manifest_rel, None)
}

/// The report paths a run of `manifest_rel` reserves while it is active (outbox-relative, as
/// the store keeps them): its JSON and CSV reports; none for a folder-recipe image, which
/// writes no report of its own.
pub fn reserved_paths(outbox: &Path, manifest_rel: &Path) -> Vec<String> {
    if crate::manifest::is_image_name(manifest_rel) {
        return Vec::new();
    }
    let (json, csv) = rel_paths(outbox, manifest_rel);
    vec![
        json.to_string_lossy().into_owned(),
        csv.to_string_lossy().into_owned(),
    ]
}

/// [`rel_paths`] with a tag before the suffix (`shoes.<tag>.report.json`).
fn rel_paths_tagged(outbox: &Path, manifest_rel: &Path, tag: Option<&str>) -> (PathBuf, PathBuf) {
    let names = filename::report_names_tagged(manifest_rel, &filename::FsLimits::of(outbox), tag);
    (names.json, names.csv)
}

/// The tag of the reports of a run a newer version of its file replaced, from the time the run
/// was registered, to the millisecond: `superseded-20261203T044700.123Z`. The newer version's
/// reports keep the plain names, so neither run's reports overwrite the other's.
pub fn superseded_tag(registered_at_ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(registered_at_ms);
    let text = humantime::format_rfc3339_millis(at).to_string();
    format!("superseded-{}", text.replace(['-', ':'], ""))
}

/// The report paths (outbox-relative) of run `m`: [`rel_paths`], tagged with
/// [`superseded_tag`] when a newer version of its file replaced it (`superseded`).
pub fn rel_paths_of_run(
    outbox: &Path,
    m: &crate::store::ManifestV1,
    superseded: bool,
) -> (PathBuf, PathBuf) {
    let tag = superseded.then(|| superseded_tag(m.registered_at_ms));
    rel_paths_tagged(outbox, Path::new(&m.rel), tag.as_deref())
}

#[cfg(test)]
mod fallback_tests {
    use super::*;

    fn report_of(sha: &str) -> String {
        format!("{{\n  \"manifest\": \"m.yaml\",\n  \"sha256\": \"{sha}\",\n  \"jobs\": []\n}}\n")
    }

    #[test]
    fn only_a_report_of_the_same_content_is_removed_from_the_archive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (json, csv) = (Path::new("m.report.json"), Path::new("m.report.csv"));
        std::fs::write(dir.path().join(json), report_of("aa11")).expect("json");
        std::fs::write(dir.path().join(csv), "status\n").expect("csv");
        // Another content's report: that run's only one, kept.
        assert_eq!(
            remove_archived_fallback(dir.path(), (json, csv), "bb22"),
            None
        );
        assert!(dir.path().join(json).exists() && dir.path().join(csv).exists());
        // A manifest path that holds the text of the key is no header.
        std::fs::write(
            dir.path().join(json),
            "{\n  \"manifest\": \"x\\n  \\\"sha256\\\": \\\"bb22\\\"\",\n  \"sha256\": \"aa11\"\n}\n",
        )
        .expect("json");
        assert_eq!(
            remove_archived_fallback(dir.path(), (json, csv), "bb22"),
            None
        );
        std::fs::write(dir.path().join(json), report_of("aa11")).expect("json");
        assert_eq!(
            remove_archived_fallback(dir.path(), (json, csv), "aa11"),
            Some(dir.path().join(json))
        );
        assert!(!dir.path().join(json).exists() && !dir.path().join(csv).exists());
        // Nothing there, or no regular file: nothing removed (a FIFO does not block).
        assert_eq!(
            remove_archived_fallback(dir.path(), (json, csv), "aa11"),
            None
        );
        assert!(
            std::process::Command::new("mkfifo")
                .arg(dir.path().join(json))
                .status()
                .expect("mkfifo")
                .success()
        );
        assert_eq!(
            remove_archived_fallback(dir.path(), (json, csv), "aa11"),
            None
        );
        assert!(dir.path().join(json).exists());
    }
}

#[cfg(test)]
mod object_tests {
    #[test]
    fn a_row_names_the_object_checked_when_only_its_extension_differs() {
        let expected = "storage://cat/out/m/f1.tiff".to_owned();
        assert_eq!(
            super::checked_name(expected.clone(), "s3://acme/images/out/m/f1.tif"),
            "storage://cat/out/m/f1.tif"
        );
        assert_eq!(
            super::checked_name(expected.clone(), "s3://acme/images/out/m/f1.tiff"),
            expected
        );
        // Another name is not this row's object: the expected one stays.
        assert_eq!(
            super::checked_name(expected.clone(), "s3://acme/images/out/m/g2.tif"),
            expected
        );
        // A local copy's path says nothing of the object's name.
        assert_eq!(
            super::checked_name(expected.clone(), "/srv/outbox/m/f1.tif"),
            expected
        );
    }
}

#[cfg(test)]
mod csv_tests {
    #[test]
    fn csv_cells_a_spreadsheet_would_run_are_quoted_as_text() {
        for (cell, shown) in [
            ("=HYPERLINK(1)+2.png", "'=HYPERLINK(1)+2.png"),
            ("+1.png", "'+1.png"),
            ("@SUM(A1).png", "'@SUM(A1).png"),
            ("shoes/a.png", "shoes/a.png"),
            ("https://x/a.png", "https://x/a.png"),
        ] {
            assert_eq!(super::spreadsheet_safe(cell.to_owned()), shown);
        }
    }

    /// A reason's control characters (Claid's words) but its newlines are escaped in the CSV,
    /// not written raw.
    #[test]
    fn csv_reasons_hold_no_raw_control_characters() {
        let report = super::Report {
            manifest: "m.yaml".to_owned(),
            sha256: String::new(),
            generated_at: String::new(),
            counts: Default::default(),
            in_doubt: 0,
            jobs: vec![super::ReportRow {
                input: "a.png".to_owned(),
                output: "m/a.jpg".to_owned(),
                status: "failed".to_owned(),
                reason: "claid-error: bad\u{1b}[31m\nline".to_owned(),
                task_id: None,
                width: None,
                height: None,
                bytes: None,
                in_doubt: 0,
                batch_id: None,
                batch_images: None,
                object: None,
            }],
        };
        let csv = super::to_csv(&report).expect("csv");
        assert!(!csv.contains('\u{1b}'), "{csv:?}");
        // The newline stays, inside the quoted field: a reader gets the line break back.
        let mut reader = csv::Reader::from_reader(csv.as_bytes());
        let row = reader.records().next().expect("row").expect("a record");
        assert!(
            row[3].ends_with("[31m\nline") && row[3].contains("bad\\"),
            "{:?}",
            &row[3]
        );
    }
}
