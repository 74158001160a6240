//! Tests for report: paths mirror the manifest, JSON and CSV contents, CSV escaping.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use claid_hotfolder::report::{self, Report, ReportRow};

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
        "input,output,status,reason,task_id,width,height,bytes,in_doubt\n",
        "storage://demo/sku-1-64x48.png,a/b/shoes/sku-1.webp,done,,42,64,48,1234,1\n",
        "\"https://x.test/a,b \"\"quoted\"\".png\",a/b/shoes/odd.webp,failed,",
        "\"invalid-operations: width, height\nsecond line\",,,,,0\n",
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
