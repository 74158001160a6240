//! Manifests: every bad-input fixture in `tests/fixtures/manifests/` with the problem and line it
//! must produce, merge semantics, default output names, mirrored output paths, job keys, limits
//! and the speed of a 100,000-image manifest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use claid_hotfolder::claid::request::{self, InputRule};
use claid_hotfolder::config::{Limits, Profile};
use claid_hotfolder::manifest::{self, Input, ManifestError, ManifestSpec};
use serde_json::json;

use crate::support::{Expect, read_expect};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/manifests")
}

/// The profiles of SPEC §3.
fn profiles() -> BTreeMap<String, Profile> {
    let mut profiles = BTreeMap::new();
    profiles.insert(
        "white-1000".to_owned(),
        Profile {
            operations: json!({
                "resizing": {"width": 1000, "height": 1000, "fit": "bounds"},
                "background": {"remove": true, "color": "#ffffff"}
            }),
            output: Some(json!({"format": {"type": "jpeg", "quality": 90}})),
        },
    );
    profiles
}

fn limits() -> Limits {
    Limits {
        max_manifest_bytes: 64 * 1024,
        max_images: 50,
        ..Limits::default()
    }
}

/// Whether `request::validate` is the real schema (the stub accepts everything).
fn schema_is_real() -> bool {
    let probe = json!({"input": "https://x/a.jpg", "operations": {"no_such_group": {}}});
    request::validate(&probe, InputRule::Required).is_err()
}

/// A temp root with `inbox/` (holding `photos/sku-1.png`, `photos/escape.png` → a file outside
/// the inbox) and `outside.png` beside the inbox.
struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
    inbox: PathBuf,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let inbox = root.join("inbox");
    std::fs::create_dir_all(inbox.join("photos")).unwrap();
    std::fs::write(inbox.join("photos/sku-1.png"), b"fake png 1").unwrap();
    std::fs::write(root.join("outside.png"), b"secret").unwrap();
    std::os::unix::fs::symlink(root.join("outside.png"), inbox.join("photos/escape.png")).unwrap();
    Env {
        _dir: dir,
        root,
        inbox,
    }
}

impl Env {
    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.inbox.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    fn load(&self, path: &Path) -> Result<ManifestSpec, ManifestError> {
        manifest::load(&self.inbox, path, &profiles(), &limits())
    }

    fn load_text(&self, rel: &str, text: &str) -> Result<ManifestSpec, ManifestError> {
        let path = self.write(rel, text);
        self.load(&path)
    }
}

/// Checks that `err` holds a problem for each expectation, and that error.txt shows it.
fn check_problems(name: &str, err: &ManifestError, expect: &[Expect]) {
    let txt = err.error_txt();
    for want in expect {
        let found = err.problems().iter().any(|p| {
            p.message.contains(&want.needle) && want.line.is_none_or(|line| p.line == Some(line))
        });
        assert!(
            found,
            "{name}: expected a problem on line {:?} containing {:?}; got:\n{txt}",
            want.line, want.needle
        );
        if let Some(line) = want.line {
            assert!(
                txt.contains(&format!("line {line}: ")),
                "{name}: error.txt lacks line {line}:\n{txt}"
            );
        }
    }
    assert!(txt.contains(name), "error.txt names the file:\n{txt}");
    assert!(txt.contains("nothing was submitted"), "{txt}");
}

#[test]
fn every_bad_manifest_fixture_is_rejected_with_its_problems() {
    let env = env();
    let real_schema = schema_is_real();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e != "expect"))
        .collect();
    entries.sort();
    let mut checked = 0;
    for fixture in entries {
        let name = fixture.file_name().unwrap().to_str().unwrap().to_owned();
        let expect = read_expect(&fixture.with_extension("expect"));
        if expect.iter().any(|e| e.schema) && !real_schema {
            eprintln!("{name}: skipped, request::validate is still a stub");
            continue;
        }
        let path = env.inbox.join(&name);
        std::fs::copy(&fixture, &path).unwrap();
        match env.load(&path) {
            Ok(spec) => panic!("{name} should be rejected, got {} jobs", spec.jobs.len()),
            Err(err) => {
                assert_eq!(err.code(), "manifest-invalid", "{name}: {err}");
                check_problems(&name, &err, &expect);
            }
        }
        checked += 1;
    }
    assert!(checked >= 30, "only {checked} fixtures checked");
}

#[test]
fn too_large_manifest_is_rejected_before_parsing() {
    let env = env();
    let mut text = String::from("images:\n");
    while text.len() <= 64 * 1024 {
        text.push_str("  - input: https://cdn.example.com/a-very-long-path/for-padding/sku.jpg\n");
    }
    let err = env.load_text("big.yaml", &text).unwrap_err();
    check_problems(
        "big.yaml",
        &err,
        &[Expect {
            schema: false,
            line: None,
            needle: "over the limit of 65536 bytes (limits.max_manifest_bytes)".into(),
        }],
    );
}

#[test]
fn problem_list_is_capped_at_200() {
    let env = env();
    let mut text = String::from("images:\n");
    for i in 0..300 {
        text.push_str(&format!("  - input: ftp://x/{i}.jpg\n"));
    }
    let limits = Limits {
        max_images: 1000,
        ..limits()
    };
    let path = env.write("many.yaml", &text);
    let err = manifest::load(&env.inbox, &path, &profiles(), &limits).unwrap_err();
    let problems = err.problems();
    assert_eq!(problems.len(), 201);
    assert_eq!(problems[200].message, "… and 100 more problems");
    assert_eq!(problems[0].line, Some(2));
    assert!(err.error_txt().contains("… and 100 more problems"));
}

#[test]
fn unreadable_path_is_a_read_error() {
    let env = env();
    let err = env.load(&env.inbox.join("gone.yaml")).unwrap_err();
    assert!(matches!(err, ManifestError::Read { .. }));
    assert_eq!(err.code(), "manifest-unreadable");
    assert!(err.error_txt().contains("gone.yaml"));
}

#[test]
fn merge_profile_then_manifest_then_image() {
    let env = env();
    let spec = env
        .load_text(
            "spring/shoes.yaml",
            "profile: white-1000\n\
             operations: { padding: \"5%\", background: { color: null } }\n\
             output: { format: webp }\n\
             images:\n\
             \x20 - input: https://cdn.example.com/sku/123.jpg\n\
             \x20   output: sku-123.webp\n\
             \x20 - input: ../photos/sku-1.png\n\
             \x20 - input: storage://my-s3/raw/125.jpg\n\
             \x20   operations: { resizing: { width: 2000, fit: null }, padding: null }\n\
             \x20 - input: https://cdn.example.com/sku/126.jpg\n\
             \x20   output: { format: { type: png }, path: p/126 }\n",
        )
        .expect("valid");
    assert_eq!(spec.rel, PathBuf::from("spring/shoes.yaml"));
    assert_eq!(spec.jobs.len(), 4);
    let shared = json!({
        "operations": {
            "resizing": {"width": 1000, "height": 1000, "fit": "bounds"},
            "background": {"remove": true},
            "padding": "5%"
        },
        "output": {"format": "webp"}
    });
    assert_eq!(
        *spec.jobs[0].body, shared,
        "scalar replaces object, null removes"
    );
    assert_eq!(*spec.jobs[1].body, shared);
    assert!(
        std::sync::Arc::ptr_eq(&spec.jobs[0].body, &spec.jobs[1].body),
        "images without their own operations share the manifest's body"
    );
    assert_eq!(
        *spec.jobs[2].body,
        json!({
            "operations": {"resizing": {"width": 2000, "height": 1000}, "background": {"remove": true}},
            "output": {"format": "webp"}
        }),
        "image operations deep-merge over the manifest's"
    );
    assert_eq!(
        spec.jobs[3].body["output"],
        json!({"format": {"type": "png"}})
    );
    assert!(spec.jobs.iter().all(|j| j.body.get("input").is_none()));

    let outs: Vec<_> = spec.jobs.iter().map(|j| j.output_rel.clone()).collect();
    assert_eq!(
        outs,
        vec![
            PathBuf::from("spring/shoes/sku-123.webp"),
            PathBuf::from("spring/shoes/sku-1.webp"),
            PathBuf::from("spring/shoes/125.webp"),
            PathBuf::from("spring/shoes/p/126.png"),
        ]
    );
    match &spec.jobs[1].input {
        Input::Local { path, rel, sha256 } => {
            assert_eq!(path, &env.inbox.join("photos/sku-1.png"));
            assert_eq!(rel, &PathBuf::from("photos/sku-1.png"));
            assert_eq!(sha256.len(), 64);
        }
        other => panic!("expected a local input, got {other:?}"),
    }
    assert_eq!(
        spec.jobs[2].input,
        Input::Remote("storage://my-s3/raw/125.jpg".into())
    );
    assert_eq!(
        spec.jobs.iter().map(|j| j.idx).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
}

#[test]
fn manifest_null_removes_profile_output() {
    let env = env();
    let spec = env
        .load_text(
            "m.yaml",
            "profile: white-1000\noutput: null\noperations: null\nimages: [\"https://c.example/x.png\"]\n",
        )
        .unwrap();
    assert_eq!(*spec.jobs[0].body, json!({"operations": {}}));
    assert_eq!(spec.jobs[0].output_rel, PathBuf::from("m/x.jpg"));
}

/// Default output names: input stem + the output format's extension.
#[test]
fn default_output_names() {
    let env = env();
    let check = |format: &str, input: &str, output: Option<&str>, want: &str| {
        let output_line = output.map_or(String::new(), |o| format!("    output: \"{o}\"\n"));
        let text = format!(
            "output: {{ format: {format} }}\nimages:\n  - input: \"{input}\"\n{output_line}"
        );
        let spec = env
            .load_text("d.yaml", &text)
            .unwrap_or_else(|e| panic!("{input}: {}", e.error_txt()));
        assert_eq!(
            spec.jobs[0].output_rel,
            PathBuf::from("d").join(want),
            "{format} {input} {output:?}"
        );
    };
    check(
        "jpeg",
        "https://c.example/a/b/shoe.png?w=1#x",
        None,
        "shoe.jpg",
    );
    check(
        "webp",
        "storage://demo/shoe-800x600.png",
        None,
        "shoe-800x600.webp",
    );
    check(
        "png",
        "https://c.example/archive.tar.gz",
        None,
        "archive.tar.png",
    );
    check("avif", "https://c.example/noext", None, "noext.avif");
    check("tiff", "photos/sku-1.png", None, "sku-1.tiff");
    check(
        "{ type: jpeg, quality: 80 }",
        "https://c.example/a.png",
        None,
        "a.jpg",
    );
    check(
        "jpeg",
        "https://c.example/a.png",
        Some("x/y.jpeg"),
        "x/y.jpeg",
    );
    check("jpeg", "https://c.example/a.png", Some("./y"), "y.jpg");
    check("webp", "https://c.example/a.png", Some("v1.2"), "v1.2.webp");
    check("tiff", "https://c.example/a.png", Some("t.tif"), "t.tif");
}

#[test]
fn json_manifest_loads() {
    let env = env();
    let spec = env
        .load_text(
            "j.json",
            r#"{"output": {"format": "png"}, "images": [{"input": "https://c.example/a.jpg"}]}"#,
        )
        .unwrap();
    assert_eq!(spec.jobs[0].output_rel, PathBuf::from("j/a.png"));
}

#[test]
fn keys_are_stable_and_change_with_input_ops_output() {
    let env = env();
    let base = "operations: { resizing: { width: 100 } }\nimages:\n  - input: https://c.example/a.jpg\n  - input: photos/sku-1.png\n";
    let a = env.load_text("k.yaml", base).unwrap();
    let b = env.load_text("k.yaml", base).unwrap();
    assert_eq!(a.jobs[0].key, b.jobs[0].key, "same manifest, same keys");
    assert_eq!(a.jobs[1].key, b.jobs[1].key);
    assert_eq!(a.sha256, b.sha256);
    assert_eq!(a.jobs[0].key.len(), 64);
    assert_ne!(a.jobs[0].key, a.jobs[1].key);

    // Reordering keys in YAML does not change the key (canonical JSON).
    let reordered = env
        .load_text("k.yaml", "images:\n  - input: https://c.example/a.jpg\n  - input: photos/sku-1.png\noperations: { resizing: { width: 100 } }\n")
        .unwrap();
    assert_eq!(reordered.jobs[0].key, a.jobs[0].key);
    assert_ne!(reordered.sha256, a.sha256);

    let ops = env
        .load_text("k.yaml", &base.replace("100", "200"))
        .unwrap();
    assert_ne!(ops.jobs[0].key, a.jobs[0].key, "operations change the key");
    assert_ne!(ops.jobs[1].key, a.jobs[1].key);

    let input = env
        .load_text("k.yaml", &base.replace("a.jpg", "b.jpg"))
        .unwrap();
    assert_ne!(
        input.jobs[0].key, a.jobs[0].key,
        "input URL changes the key"
    );
    assert_eq!(
        input.jobs[1].key, a.jobs[1].key,
        "other jobs keep their key"
    );

    std::fs::write(env.inbox.join("photos/sku-1.png"), b"changed content").unwrap();
    let content = env.load_text("k.yaml", base).unwrap();
    assert_ne!(
        content.jobs[1].key, a.jobs[1].key,
        "local content changes the key"
    );
    assert_eq!(content.jobs[0].key, a.jobs[0].key);

    let out = env
        .load_text(
            "k.yaml",
            &base.replace("a.jpg\n", "a.jpg\n    output: other.jpg\n"),
        )
        .unwrap();
    assert_ne!(
        out.jobs[0].key, a.jobs[0].key,
        "output path changes the key"
    );

    // The key is what key_for computes from the public parts.
    let job = &a.jobs[0];
    assert_eq!(
        manifest::key_for(&job.input, &job.body, &job.output_rel),
        job.key
    );
}

#[test]
fn same_local_file_twice_is_hashed_once_and_shared() {
    let env = env();
    let spec = env
        .load_text(
            "s.yaml",
            "images:\n  - input: photos/sku-1.png\n  - input: ./photos/sku-1.png\n    output: copy.jpg\n",
        )
        .unwrap();
    assert_eq!(spec.jobs[0].input, spec.jobs[1].input);
}

#[test]
fn problems_are_reported_for_the_whole_manifest_not_the_first() {
    let env = env();
    let err = env
        .load_text(
            "w.yaml",
            "images:\n  - input: https://c.example/a.jpg\n    output: ../x.jpg\n  - input: photos/none.png\n  - input: https://c.example/b.jpg\n    output: /abs.jpg\n",
        )
        .unwrap_err();
    let lines: Vec<_> = err.problems().iter().map(|p| p.line).collect();
    assert_eq!(
        lines,
        vec![Some(3), Some(4), Some(6)],
        "{}",
        err.error_txt()
    );
    assert!(env.root.join("outside.png").exists());
}

#[test]
fn hundred_thousand_images_load_fast() {
    let env = env();
    let mut text = String::with_capacity(6_000_000);
    text.push_str("profile: white-1000\noutput: { format: webp }\nimages:\n");
    for i in 0..100_000 {
        text.push_str(&format!(
            "  - input: https://cdn.example.com/catalogue/sku-{i}.jpg\n"
        ));
    }
    let path = env.write("big/catalogue.yaml", &text);
    let limits = Limits {
        max_manifest_bytes: 16 * 1024 * 1024,
        max_images: 100_000,
        ..Limits::default()
    };
    let started = Instant::now();
    let spec = manifest::load(&env.inbox, &path, &profiles(), &limits).expect("valid");
    let elapsed = started.elapsed();
    assert_eq!(spec.jobs.len(), 100_000);
    assert_eq!(
        spec.jobs[99_999].output_rel,
        PathBuf::from("big/catalogue/sku-99999.webp")
    );
    // Release builds take a fraction of a second; the bound leaves room for debug builds on a
    // busy two-core machine.
    eprintln!("100,000-image manifest loaded in {elapsed:?}");
    assert!(elapsed.as_secs() < 30, "took {elapsed:?}");

    // One image over the limit is rejected without validating the others.
    let limits = Limits {
        max_images: 99_999,
        ..limits
    };
    let err = manifest::load(&env.inbox, &path, &profiles(), &limits).unwrap_err();
    assert_eq!(err.problems().len(), 1);
    assert_eq!(err.problems()[0].line, Some(3));
}

#[test]
fn schema_problems_map_to_image_and_manifest_lines() {
    if !schema_is_real() {
        eprintln!("request::validate is still a stub; schema line mapping not exercised");
        return;
    }
    let env = env();
    let err = env
        .load_text(
            "s.yaml",
            "operations:\n  resizing: { width: -1 }\nimages:\n  - input: https://c.example/a.jpg\n  - input: https://c.example/b.jpg\n    operations:\n      adjustments: { exposure: 900 }\n",
        )
        .unwrap_err();
    let txt = err.error_txt();
    assert!(
        err.problems()
            .iter()
            .any(|p| p.line == Some(2) && p.message.starts_with("operations.resizing.width")),
        "{txt}"
    );
    assert!(
        err.problems().iter().any(|p| p.line == Some(7)
            && p.message
                .starts_with("images[1].operations.adjustments.exposure")),
        "{txt}"
    );
}
