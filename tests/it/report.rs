//! Tests for report: paths mirror the manifest, JSON and CSV contents, CSV escaping.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use claid_hotfolder::codes::FailureCode;
use claid_hotfolder::report::{self, Report, ReportRow};
use claid_hotfolder::store::records::{JobState, JobV1, ManifestState, ManifestV1};

fn sample() -> Report {
    Report {
        manifest: "a/b/shoes.yaml".to_owned(),
        sha256: "ab".repeat(32),
        generated_at: "2026-11-29T22:00:00Z".to_owned(),
        counts: BTreeMap::from([("done".to_owned(), 1), ("failed".to_owned(), 1)]),
        in_doubt: 1,
        jobs: vec![
            ReportRow {
                input: "storage://demo/sku-1-64x48.png".to_owned(),
                output: "a/b/shoes/sku-1.webp".to_owned(),
                status: "done".to_owned(),
                reason: String::new(),
                task_id: Some(42),
                width: Some(64),
                height: Some(48),
                bytes: Some(1234),
                in_doubt: 1,
                batch_id: Some(7),
                batch_images: Some(3),
                object: None,
            },
            ReportRow {
                input: "https://x.test/a,b \"quoted\".png".to_owned(),
                output: "a/b/shoes/odd.webp".to_owned(),
                status: "failed".to_owned(),
                reason: "invalid-operations: width, height\nsecond line".to_owned(),
                task_id: None,
                width: None,
                height: None,
                bytes: None,
                in_doubt: 0,
                batch_id: None,
                batch_images: None,
                object: None,
            },
        ],
    }
}

#[test]
fn paths_mirror_the_manifest() {
    let outbox = Path::new("/out");
    let check = |rel: &str, json: &str, csv: &str| {
        let (j, c) = report::paths(outbox, Path::new(rel));
        assert_eq!(
            (j.as_path(), c.as_path()),
            (Path::new(json), Path::new(csv)),
            "{rel}"
        );
    };
    check(
        "a/b/shoes.yaml",
        "/out/a/b/shoes.report.json",
        "/out/a/b/shoes.report.csv",
    );
    check("top.json", "/out/top.report.json", "/out/top.report.csv");
    check(
        "x/cat.v2.yml",
        "/out/x/cat.v2.report.json",
        "/out/x/cat.v2.report.csv",
    );
}

#[test]
fn write_produces_json_and_csv() {
    let tmp = tempfile::tempdir().unwrap();
    let report = sample();
    let (json_path, csv_path) =
        report::write(tmp.path(), Path::new("a/b/shoes.yaml"), &report).unwrap();
    assert_eq!(json_path, tmp.path().join("a/b/shoes.report.json"));
    assert_eq!(csv_path, tmp.path().join("a/b/shoes.report.csv"));

    let json: Report = serde_json::from_str(&fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(json, report);

    let csv = fs::read_to_string(&csv_path).unwrap();
    let expected = concat!(
        "input,output,status,reason,task_id,width,height,bytes,in_doubt,batch_id,object,batch_images\n",
        "storage://demo/sku-1-64x48.png,a/b/shoes/sku-1.webp,done,,42,64,48,1234,1,7,,3\n",
        "\"https://x.test/a,b \"\"quoted\"\".png\",a/b/shoes/odd.webp,failed,",
        "\"invalid-operations: width, height\nsecond line\",,,,,0,,,\n",
    );
    assert_eq!(csv, expected);

    // A CSV reader gets the original fields back.
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(&rows[1][0], report.jobs[1].input);
    assert_eq!(&rows[1][3], report.jobs[1].reason);

    let mut names: Vec<_> = fs::read_dir(tmp.path().join("a/b"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["shoes.report.csv", "shoes.report.json"],
        "no temp files left"
    );
}

#[test]
fn rewriting_a_report_replaces_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut report = sample();
    report::write(tmp.path(), Path::new("s.yaml"), &report).unwrap();
    report.jobs.truncate(1);
    let (_, csv_path) = report::write(tmp.path(), Path::new("s.yaml"), &report).unwrap();
    assert_eq!(fs::read_to_string(csv_path).unwrap().lines().count(), 2);
}

#[test]
fn a_manifest_path_escaping_the_outbox_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let err = report::write(tmp.path(), Path::new("../evil.yaml"), &sample()).unwrap_err();
    assert_eq!(err.code(), "output-unsafe-path");
}

fn job(input: &str, state: JobState, in_doubt: u32) -> JobV1 {
    JobV1 {
        manifest: 1,
        idx: 0,
        key: "k".to_owned(),
        input: input.to_owned(),
        local: false,
        body: serde_json::json!({}).into(),
        output_rel: format!("m/{input}.webp"),
        state,
        attempts: 1,
        in_doubt,
        polls: 0,
        request_ids: Vec::new(),
        batch: None,
        batch_images: None,
        staged: None,
        replaces: None,
        submitted_to: None,
        input_seen: None,
        lost_answers: 0,
        accepted_unread: false,
        updated_at_ms: 0,
    }
}

/// A row's input and its failure's reason (Claid's message may quote the input's URL) show a
/// URL's credentials as `REDACTED`: the outbox is shared more widely than the inbox.
#[test]
fn a_row_never_shows_the_credentials_of_a_url() {
    let url = "https://user:hunter2pw@cdn.example.com/a.png?X-Amz-Signature=SIGSECRET";
    let failed = JobState::Failed {
        code: FailureCode::ClaidError,
        message: format!("cannot fetch {url}: 403"),
        attempts: 1,
        task_id: None,
        unwritten: None,
    };
    let row = report::row(&job(url, failed, 0));
    for shown in [&row.input, &row.reason] {
        assert!(shown.contains("REDACTED"), "{shown}");
        assert!(
            !shown.contains("hunter2pw") && !shown.contains("SIGSECRET"),
            "{shown}"
        );
    }
}

#[test]
fn build_maps_job_states_to_rows_and_counts() {
    let done = |unchanged| JobState::Done {
        path: "/out/m/x.webp".to_owned(),
        bytes: 99,
        sha256: String::new(),
        width: 10,
        height: 20,
        task_id: if unchanged { None } else { Some(5) },
        unchanged,
        skipped: false,
    };
    let jobs = [
        job("a", done(false), 1),
        job("b", done(true), 0),
        job(
            "c",
            JobState::Failed {
                code: FailureCode::ClaidInvalidRequest,
                message: "width must be positive".to_owned(),
                attempts: 1,
                task_id: None,
                unwritten: None,
            },
            0,
        ),
        job(
            "d",
            JobState::InDoubt {
                since_ms: 1,
                claid_said: None,
            },
            2,
        ),
        job(
            "e",
            JobState::Submitted {
                task_id: 8,
                result_url: String::new(),
                at_ms: 0,
            },
            0,
        ),
    ];
    let manifest = ManifestV1 {
        rel: "m.yaml".to_owned(),
        sha256: "ff".to_owned(),
        registered_at_ms: 0,
        n_jobs: 5,
        state: ManifestState::Running,
        counts: None,
        staging_cleanup: false,
    };
    let report = report::build(&manifest, &jobs, report::now_rfc3339());
    assert_eq!(
        (report.manifest.as_str(), report.sha256.as_str()),
        ("m.yaml", "ff")
    );
    assert!(
        report.generated_at.ends_with('Z'),
        "{}",
        report.generated_at
    );
    let summary: Vec<_> = report
        .jobs
        .iter()
        .map(|r| {
            (
                r.input.as_str(),
                r.status.as_str(),
                r.task_id,
                r.bytes,
                r.reason.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("a", "done", Some(5), Some(99), ""),
            ("b", "unchanged", None, Some(99), ""),
            (
                "c",
                "failed",
                None,
                None,
                "claid-invalid-request: width must be positive"
            ),
            (
                "d",
                "in-doubt",
                None,
                None,
                "in-doubt: the submit may have reached Claid; see `replay --in-doubt`"
            ),
            ("e", "submitted", Some(8), None, ""),
        ]
    );
    assert_eq!(
        (report.jobs[0].width, report.jobs[0].height),
        (Some(10), Some(20))
    );
    assert_eq!(report.jobs[0].output, "m/a.webp");
    let counts: Vec<_> = report
        .counts
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(
        counts,
        [
            ("done", 1),
            ("failed", 1),
            ("in-doubt", 1),
            ("submitted", 1),
            ("unchanged", 1)
        ]
    );
    assert_eq!(report.in_doubt, 3);
}

/// A job a newer version of its manifest took over is `superseded` in the report, counted
/// apart from the failed ones (nothing went wrong with it), with its reason.
#[test]
fn a_superseded_job_is_its_own_status_not_a_failure() {
    let jobs = [
        job(
            "old",
            JobState::Failed {
                code: FailureCode::Superseded,
                message: "the manifest was saved again; the new version processes it".to_owned(),
                attempts: 0,
                task_id: None,
                unwritten: None,
            },
            0,
        ),
        job(
            "bad",
            JobState::Failed {
                code: FailureCode::ClaidInvalidRequest,
                message: "width must be positive".to_owned(),
                attempts: 1,
                task_id: None,
                unwritten: None,
            },
            0,
        ),
    ];
    let manifest = ManifestV1 {
        rel: "m.yaml".to_owned(),
        sha256: "ff".to_owned(),
        registered_at_ms: 0,
        n_jobs: 2,
        state: ManifestState::Running,
        counts: None,
        staging_cleanup: false,
    };
    let report = report::build(&manifest, &jobs, report::now_rfc3339());
    assert_eq!(report.jobs[0].status, "superseded");
    assert!(
        report.jobs[0].reason.starts_with("superseded: "),
        "{}",
        report.jobs[0].reason
    );
    let counts: Vec<_> = report
        .counts
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(counts, [("failed", 1), ("superseded", 1)]);
}
