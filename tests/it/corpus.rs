//! The bad-input corpus (issue 5): every malformed manifest and config in `tests/fixtures/`
//! plus inputs generated here (files over the size limit, 10,000 levels of nesting, alias bombs,
//! binary garbage, names that are not UTF-8), each with the problem it must produce. Checked
//! through the library on a thread with the blocking pool's stack size, and end to end through
//! the real binary: one inbox holding the whole corpus and one good manifest.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use claid_hotfolder::claid::request::{self, InputRule};
use claid_hotfolder::config::{self, Limits, Profile};
use claid_hotfolder::emulator::Scenario;
use claid_hotfolder::manifest::{self, ManifestError};
use serde_json::json;

use crate::support::{Expect, TestEnv, dimensions, png, read_expect};

/// Stack of tokio's blocking threads, where the daemon parses manifests: parsing must fit it.
const BLOCKING_STACK: usize = 2 * 1024 * 1024;

/// The size limit the corpus runs with (small, so "over the limit" needs no megabytes).
const MAX_MANIFEST_BYTES: u64 = 64 * 1024;

fn fixtures(kind: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(kind)
}

fn expect(line: Option<usize>, needle: &str) -> Vec<Expect> {
    vec![Expect {
        schema: false,
        line,
        needle: needle.to_owned(),
    }]
}

fn schema_is_real() -> bool {
    let probe = json!({"input": "https://x/a.jpg", "operations": {"no_such_group": {}}});
    request::validate(&probe, InputRule::Required).is_err()
}

/// The profiles the manifest fixtures refer to (config/claid-hotfolder.yaml).
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

/// The same profile and limits as config YAML, for the daemon.
const CONFIG_EXTRA: &str = "\
limits: { max_manifest_bytes: 65536, max_images: 50 }
profiles:
  white-1000:
    operations: { resizing: { width: 1000, height: 1000, fit: bounds }, background: { remove: true, color: \"#ffffff\" } }
    output: { format: { type: jpeg, quality: 90 } }
";

fn limits() -> Limits {
    Limits {
        max_manifest_bytes: MAX_MANIFEST_BYTES,
        max_images: 50,
        ..Limits::default()
    }
}

/// `manifest::load` with the corpus's profiles and limits, and no outbox.
fn load(inbox: &Path, path: &Path) -> Result<manifest::ManifestSpec, ManifestError> {
    let ctx = manifest::LoadContext {
        inbox,
        outbox: None,
        profiles: &profiles(),
        limits: &limits(),
        storages: &Default::default(),
    };
    manifest::load(&ctx, path)
}

/// One bad manifest: its file name in the inbox (bytes: it may not be UTF-8), its content and
/// the problems it must produce.
struct Bad {
    name: Vec<u8>,
    bytes: Vec<u8>,
    expect: Vec<Expect>,
    kind: &'static str,
}

impl Bad {
    fn rel(&self) -> PathBuf {
        PathBuf::from(OsStr::from_bytes(&self.name))
    }

    fn display(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

/// Deterministic pseudo-random bytes (xorshift), so the garbage is the same on every run.
fn garbage(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect()
}

/// Inputs generated rather than committed: too big, too deep, binary, or with odd names.
fn generated() -> Vec<Bad> {
    let mut out = Vec::new();
    let mut add = |name: &[u8], bytes: Vec<u8>, kind, expect: Vec<Expect>| {
        out.push(Bad {
            name: name.to_vec(),
            bytes,
            expect,
            kind,
        })
    };
    // Over the size limit by one byte, and by a lot.
    let mut big = b"images:\n".to_vec();
    while big.len() as u64 <= MAX_MANIFEST_BYTES {
        big.extend_from_slice(b"  - input: https://cdn.example.com/sku.jpg\n");
    }
    big.truncate(MAX_MANIFEST_BYTES as usize + 1);
    add(
        b"gen-over-limit-by-one.yaml",
        big,
        "huge file",
        expect(
            None,
            "over the limit of 65536 bytes (limits.max_manifest_bytes)",
        ),
    );
    add(
        b"gen-huge.yaml",
        vec![b'#'; 4 * 1024 * 1024],
        "huge file",
        expect(None, "the manifest is 4194304 bytes, over the limit"),
    );
    // 10,000 levels of nesting, in every shape.
    let deep = |open: &str| {
        let mut text = String::from("images: ");
        text.push_str(&open.repeat(10_000));
        text.into_bytes()
    };
    let recursion = expect(None, "recursion limit exceeded");
    add(
        b"gen-deep-flow-seq.yaml",
        deep("["),
        "deep nesting",
        recursion.clone(),
    );
    add(
        b"gen-deep-flow-map.yaml",
        deep("{a: "),
        "deep nesting",
        recursion.clone(),
    );
    add(
        b"gen-deep-closed.yaml",
        format!("images: {}x{}\n", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
        "deep nesting",
        recursion.clone(),
    );
    add(
        b"gen-deep-block-seq.yaml",
        format!("{}x\n", "- ".repeat(10_000)).into_bytes(),
        "deep nesting",
        recursion.clone(),
    );
    let mut indented = String::from("images:\n");
    for depth in 1..300 {
        indented.push_str(&" ".repeat(depth));
        indented.push_str("k:\n");
    }
    add(
        b"gen-deep-indent.yaml",
        indented.into_bytes(),
        "deep nesting",
        recursion.clone(),
    );
    add(
        b"gen-deep-json.json",
        format!("{{\"images\": {}", "[".repeat(10_000)).into_bytes(),
        "deep nesting",
        recursion,
    );
    // An alias bomb the event count does not catch: one 20 KB string repeated 10,000 times
    // (200 MB expanded, in a 50 KB file).
    let mut quadratic = format!("x: &a \"{}\"\ny: [", "lol".repeat(7_000));
    quadratic.push_str(&"*a,".repeat(10_000));
    quadratic.push_str("*a]\nimages:\n  - input: https://cdn.example.com/a.jpg\n");
    add(
        b"gen-alias-quadratic.yaml",
        quadratic.into_bytes(),
        "alias bomb",
        expect(
            Some(2),
            "anchors and aliases (`&a`, `*a`) expand to more than",
        ),
    );
    // A deeper billion-laughs than the committed one (10 levels of 10).
    let mut laughs = String::from("l0: &l0 [lol,lol,lol,lol,lol,lol,lol,lol,lol,lol]\n");
    for i in 1..10 {
        let p = i - 1;
        laughs.push_str(&format!(
            "l{i}: &l{i} [{}]\n",
            vec![format!("*l{p}"); 10].join(",")
        ));
    }
    laughs.push_str("images:\n  - input: https://cdn.example.com/a.jpg\n");
    add(
        b"gen-billion-laughs.yaml",
        laughs.into_bytes(),
        "alias bomb",
        expect(None, "repetition limit exceeded"),
    );
    // Binary garbage: random bytes, random ASCII with NULs, a truncated gzip header.
    add(
        b"gen-garbage.yaml",
        garbage(8192, 0x9e37_79b9_7f4a_7c15),
        "binary garbage",
        expect(None, "not UTF-8 text"),
    );
    let mut nul_text: Vec<u8> = garbage(4096, 42).iter().map(|b| b' ' + b % 95).collect();
    nul_text[100] = 0;
    add(
        b"gen-garbage-nul.json",
        nul_text,
        "binary garbage",
        expect(None, "contains NUL bytes"),
    );
    add(
        b"gen-gzip.yml",
        vec![0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03],
        "binary garbage",
        expect(None, "not UTF-8 text"),
    );
    // Empty files of each extension.
    add(
        b"gen-empty.json",
        Vec::new(),
        "empty file",
        expect(None, "the manifest is empty"),
    );
    add(
        b"gen-empty.yml",
        b"\n\n".to_vec(),
        "empty file",
        expect(None, "the manifest is empty"),
    );
    add(
        b"gen-bom-only.yaml",
        b"\xef\xbb\xbf".to_vec(),
        "BOM",
        expect(None, "the manifest must be a mapping"),
    );
    // Control characters YAML forbids.
    add(
        b"gen-escape-char.yaml",
        b"images:\n  - input: https://cdn.example.com/a\x1b[31m.jpg\n".to_vec(),
        "syntax error",
        // Named with its line and column (the parser's own message has neither).
        expect(
            Some(2),
            "column 37 holds the control character U+001B, which YAML does not allow",
        ),
    );
    // An input longer than Claid accepts.
    add(
        b"gen-long-url.yaml",
        format!(
            "images:\n  - input: https://cdn.example.com/{}.jpg\n",
            "a".repeat(5000)
        )
        .into_bytes(),
        "out-of-range value",
        expect(Some(2), "Claid accepts at most 4096"),
    );
    // A double-quoted scalar ending the file with an escape: libyaml-safer's scanner panicked
    // (`validate` died with 101; the daemon's intake with it).
    add(
        b"gen-trailing-escape.yaml",
        b"\"\\".to_vec(),
        "bad yaml",
        expect(None, "not valid YAML"),
    );
    add(
        b"gen-trailing-escape-in-value.yaml",
        b"images:\n  - input: \"https://cdn.example.com/a.jpg\\".to_vec(),
        "bad yaml",
        expect(None, "not valid YAML"),
    );
    // A host or a port no client can reach.
    add(
        b"gen-broken-ipv6.yaml",
        b"images:\n  - input: http://[::1/bad.png\n".to_vec(),
        "bad url",
        expect(Some(2), "is not a valid URL (invalid IPv6 address)"),
    );
    add(
        b"gen-port-out-of-range.yaml",
        b"images:\n  - input: http://127.0.0.1:99999/x.png\n".to_vec(),
        "bad url",
        expect(Some(2), "is not a valid URL (invalid port number)"),
    );
    // 300 bad images: the problem list is capped, the file still rejected.
    let mut many = String::from("images:\n");
    for i in 0..49 {
        many.push_str(&format!(
            "  - input: ftp://x/{i}.jpg\n    output: ../{i}.jpg\n"
        ));
    }
    add(
        b"gen-many-problems.yaml",
        many.into_bytes(),
        "wrong values",
        expect(Some(2), "unsupported scheme `ftp://`"),
    );
    // Names that are not UTF-8 (Latin-1 `café.yaml`), for a file and for a folder.
    add(
        b"caf\xe9.yaml",
        b"images:\n  - input: https://cdn.example.com/a.jpg\n".to_vec(),
        "non-UTF-8 name",
        expect(None, "is not valid UTF-8; rename the file"),
    );
    add(
        b"d\xff\xfe/inner.yaml",
        b"images:\n  - input: https://cdn.example.com/a.jpg\n".to_vec(),
        "non-UTF-8 name",
        expect(None, "is not valid UTF-8; rename the file"),
    );
    out
}

/// The committed bad manifests, with their `.expect`.
fn committed(real_schema: bool) -> Vec<Bad> {
    let dir = fixtures("manifests");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e != "expect"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .filter_map(|path| {
            let expect = read_expect(&path.with_extension("expect"));
            if expect.iter().any(|e| e.schema) && !real_schema {
                return None;
            }
            Some(Bad {
                name: path.file_name().expect("name").as_bytes().to_vec(),
                bytes: std::fs::read(&path).expect("fixture"),
                expect,
                kind: "fixture",
            })
        })
        .collect()
}

/// The inbox layout the manifest fixtures assume: `photos/sku-1.png`, `photos/escape.png` → a
/// file beside the inbox, and that file (`../outside.png`).
fn plant_photos(root: &Path, inbox: &Path) {
    std::fs::create_dir_all(inbox.join("photos")).expect("photos");
    std::fs::write(inbox.join("photos/sku-1.png"), png(4, 3)).expect("sku-1");
    std::fs::write(root.join("outside.png"), b"secret").expect("outside");
    std::os::unix::fs::symlink(root.join("outside.png"), inbox.join("photos/escape.png"))
        .expect("symlink");
}

/// Whether the problems (or the error text) hold each expectation.
fn missing_expectations(err: &ManifestError, expect: &[Expect]) -> Vec<String> {
    let txt = err.error_txt();
    expect
        .iter()
        .filter(|want| {
            !err.problems().iter().any(|p| {
                p.message.contains(&want.needle) && want.line.is_none_or(|l| p.line == Some(l))
            })
        })
        .map(|want| format!("line {:?}: {:?}\n{txt}", want.line, want.needle))
        .collect()
}

/// Runs `f` on a thread with the blocking pool's stack: a stack overflow aborts the test
/// binary, so reaching the end at all is the proof.
fn on_blocking_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(BLOCKING_STACK)
        .spawn(f)
        .expect("thread")
        .join()
        .expect("no panic")
}

#[test]
fn every_bad_manifest_is_rejected_with_its_problem_without_panic() {
    let real_schema = schema_is_real();
    let mut corpus = committed(real_schema);
    corpus.extend(generated());
    let n = corpus.len();
    let failures = on_blocking_stack(move || {
        let dir = tempfile::tempdir().expect("temp");
        let root = dir.path().canonicalize().expect("canonical");
        let inbox = root.join("inbox");
        plant_photos(&root, &inbox);
        let mut failures = Vec::new();
        for bad in &corpus {
            let path = inbox.join(bad.rel());
            std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
            std::fs::write(&path, &bad.bytes).expect("write");
            match load(&inbox, &path) {
                Ok(spec) => failures.push(format!(
                    "{}: accepted with {} jobs",
                    bad.display(),
                    spec.jobs.len()
                )),
                Err(err) => {
                    for missing in missing_expectations(&err, &bad.expect) {
                        failures.push(format!("{}: expected {missing}", bad.display()));
                    }
                }
            }
            std::fs::remove_file(&path).expect("remove");
        }
        failures
    });
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(n >= 100, "only {n} bad manifests");
}

/// What is not bad: a BOM, CRLF line ends and tabs inside quoted strings are accepted, in YAML
/// and JSON, and give the same jobs as the plain file.
#[test]
fn bom_crlf_and_tabs_in_strings_are_accepted() {
    let dir = tempfile::tempdir().expect("temp");
    let inbox = dir.path().join("inbox");
    std::fs::create_dir_all(&inbox).expect("inbox");
    let load_bytes = |name: &str, bytes: &[u8]| {
        let path = inbox.join(name);
        std::fs::write(&path, bytes).expect("write");
        load(&inbox, &path).unwrap_or_else(|e| panic!("{name}: {}", e.error_txt()))
    };
    let yaml = "output: {\tformat: png }\nimages:\n  - input:\thttps://cdn.example.com/a.jpg\n    output: \"a b.png\"\n";
    let plain = load_bytes("m.yaml", yaml.as_bytes());
    let mut bom = b"\xef\xbb\xbf".to_vec();
    bom.extend_from_slice(yaml.as_bytes());
    let crlf = yaml.replace('\n', "\r\n");
    for (name, bytes) in [("m.yaml", bom.clone()), ("m.yaml", crlf.into_bytes())] {
        let spec = load_bytes(name, &bytes);
        assert_eq!(spec.jobs[0].key, plain.jobs[0].key, "{name}");
    }
    let json = "{\"output\":\t{\"format\": \"png\"},\r\n \"images\": [{\"input\": \"https://cdn.example.com/a.jpg\", \"output\": \"a b.png\"}]}";
    let mut bom_json = b"\xef\xbb\xbf".to_vec();
    bom_json.extend_from_slice(json.as_bytes());
    let spec = load_bytes("m.json", &bom_json);
    assert_eq!(spec.jobs[0].key, plain.jobs[0].key, "JSON with a BOM");

    // A BOM does not shift or hide the line of a problem.
    let err = load(&inbox, &{
        let path = inbox.join("b.yaml");
        let mut bytes = b"\xef\xbb\xbf".to_vec();
        bytes.extend_from_slice(b"images:\n  - input: ftp://x/a.jpg\n");
        std::fs::write(&path, bytes).expect("write");
        path
    })
    .expect_err("ftp is refused");
    assert_eq!(err.problems()[0].line, Some(2), "{}", err.error_txt());
}

/// Configs nested 10,000 deep are refused without overflowing the stack: serde_norway stops
/// at 128 levels, and the line pass that runs on every bad config walks events iteratively.
#[test]
fn deeply_nested_and_alias_bomb_configs_are_refused_without_overflow() {
    let head = "folders: { inbox: in, outbox: out, archive: arch, rejected: rej, state: st }\n";
    let mut cases: Vec<(&str, String)> = vec![
        ("flow seq", format!("{head}watch: {}", "[".repeat(10_000))),
        (
            "flow map",
            format!("{head}watch: {}", "{a: ".repeat(10_000)),
        ),
        (
            "closed",
            format!(
                "{head}watch: {}1{}\n",
                "[".repeat(10_000),
                "]".repeat(10_000)
            ),
        ),
        ("block seq", format!("{}x\n", "- ".repeat(10_000))),
        ("block seq 100k", format!("{}x\n", "- ".repeat(100_000))),
    ];
    let mut indented = format!("{head}watch:\n");
    for depth in 1..2_000 {
        indented.push_str(&" ".repeat(depth));
        indented.push_str("k:\n");
    }
    cases.push(("indent", indented));
    let mut quadratic = format!("{head}x: &a \"{}\"\ny: [", "lol".repeat(100_000));
    quadratic.push_str(&"*a,".repeat(2_000));
    quadratic.push_str("*a]\n");
    cases.push(("quadratic aliases", quadratic));
    let failures = on_blocking_stack(move || {
        let mut failures = Vec::new();
        for (name, text) in &cases {
            match config::parse(text, Path::new("/etc/claid-hotfolder/deep.yaml")) {
                Ok(_) => failures.push(format!("{name}: accepted")),
                Err(err) => {
                    let shown = err.to_string();
                    if !(shown.contains("recursion limit exceeded")
                        || shown.contains("repetition limit exceeded")
                        || shown.contains("not valid YAML"))
                    {
                        failures.push(format!("{name}: unexpected error {shown}"));
                    }
                }
            }
        }
        failures
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Names that are not UTF-8 are manifests (so they are rejected with a message rather than
/// left unseen in the inbox forever).
#[test]
fn non_utf8_names_are_manifests_and_are_rejected() {
    for name in [&b"caf\xe9.yaml"[..], b"x\xff.JSON", b"\xfe.yml"] {
        assert!(
            manifest::is_manifest_name(Path::new(OsStr::from_bytes(name))),
            "{}",
            String::from_utf8_lossy(name)
        );
    }
    assert!(!manifest::is_manifest_name(Path::new(OsStr::from_bytes(
        b".caf\xe9.yaml"
    ))));
    assert!(!manifest::is_manifest_name(Path::new(OsStr::from_bytes(
        b"caf\xe9.yaml.part"
    ))));
}

/// Where the daemon puts the error text of a rejected manifest: `<name>.error.txt` beside it,
/// the name as it is (bytes that are not UTF-8 included, so two such names keep two files).
fn error_txt_path(rejected: &Path, rel: &Path) -> PathBuf {
    let mut name = rel.file_name().expect("name").to_owned();
    name.push(".error.txt");
    rejected.join(rel).with_file_name(name)
}

/// exit 2 (not a panic), each bad one in rejected/ with its problem in `.error.txt`, the good
/// one processed, and not one API call for the bad ones.
#[tokio::test(flavor = "multi_thread")]
async fn whole_corpus_through_the_daemon_rejects_each_and_processes_the_good_one() {
    let env = TestEnv::new(Scenario::default()).await;
    let real_schema = schema_is_real();
    let mut corpus = committed(real_schema);
    corpus.extend(generated());
    plant_photos(env.dir.path(), &env.inbox);
    for bad in &corpus {
        let path = env.inbox.join(bad.rel());
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
        std::fs::write(&path, &bad.bytes).expect("write");
    }
    env.drop_file(
        "good.yaml",
        b"output: { format: png }\nimages:\n  - input: storage://demo/good-64x48.png\n",
    );
    let config = env.config("", CONFIG_EXTRA);
    let (code, stderr) = env.run_once(&config).await;
    assert!(
        !stderr.contains("panicked"),
        "the daemon panicked:\n{stderr}"
    );
    assert_eq!(
        code, 2,
        "exit 2: manifests were rejected; stderr:\n{stderr}"
    );

    let mut failures = Vec::new();
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for bad in &corpus {
        *by_kind.entry(bad.kind).or_default() += 1;
        let rel = bad.rel();
        if env.inbox.join(&rel).exists() {
            failures.push(format!("{}: still in the inbox", bad.display()));
            continue;
        }
        if !env.rejected.join(&rel).is_file() {
            failures.push(format!("{}: not moved to rejected/", bad.display()));
            continue;
        }
        let error_path = error_txt_path(&env.rejected, &rel);
        let Ok(txt) = std::fs::read_to_string(&error_path) else {
            failures.push(format!("{}: no {}", bad.display(), error_path.display()));
            continue;
        };
        for want in &bad.expect {
            let found = txt.lines().any(|l| {
                l.contains(&want.needle)
                    && want
                        .line
                        .is_none_or(|n| l.starts_with(&format!("line {n}: ")))
            });
            if !found {
                failures.push(format!(
                    "{}: error.txt lacks line {:?} {:?}:\n{txt}",
                    bad.display(),
                    want.line,
                    want.needle
                ));
            }
        }
        if !txt.contains("nothing was submitted") {
            failures.push(format!(
                "{}: error.txt does not say nothing was submitted",
                bad.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let out = env.outbox.join("good/good-64x48.png");
    assert!(
        out.is_file(),
        "good output missing; outbox: {:?}",
        TestEnv::files_under(&env.outbox)
    );
    assert_eq!(dimensions(&out), (64, 48));
    assert!(
        env.archive.join("good.yaml").is_file(),
        "good manifest archived"
    );
    let stats = env.stats();
    assert_eq!(
        stats.submits, 1,
        "only the good manifest was submitted: {stats:?}"
    );
    assert_eq!(stats.uploads, 0, "no uploads: {stats:?}");
    assert_eq!(stats.sync_edits, 0, "no sync edits: {stats:?}");
    eprintln!(
        "corpus: {} bad manifests rejected through the daemon, by kind {by_kind:?}",
        corpus.len()
    );
}

/// Runs `validate FILE` on every bad config fixture; returns (name, exit code, output, expect).
async fn validate_each_config() -> Vec<(String, Option<i32>, String, Vec<Expect>)> {
    let dir = fixtures("config");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for path in &paths {
        let run = tokio::process::Command::new(crate::support::bin())
            .arg("validate")
            .arg(path)
            .env_remove("CLAID_HOTFOLDER_CONFIG")
            .output()
            .await
            .expect("validate runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        out.push((
            name,
            run.status.code(),
            text,
            read_expect(&path.with_extension("expect")),
        ));
    }
    out
}

/// `validate` on every bad config fixture exits 65 (EX_DATAERR); when it recognises the file as
/// a config (it parses and has `folders`), the expected problem is in its output.
#[tokio::test(flavor = "multi_thread")]
async fn validate_exits_65_on_every_bad_config_fixture() {
    let results = validate_each_config().await;
    let mut failures = Vec::new();
    for (name, code, text, expect) in &results {
        if *code != Some(65) {
            failures.push(format!("{name}: exit {code:?}, want 65:\n{text}"));
            continue;
        }
        if !text.contains("invalid config") {
            continue; // Taken for a manifest: see the DEFECT test below.
        }
        for want in expect {
            if !text.contains(&want.needle) {
                failures.push(format!("{name}: output lacks {:?}:\n{text}", want.needle));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        results.len() >= 40,
        "only {} config fixtures",
        results.len()
    );
}

/// DEFECT (src/cli.rs, `looks_like_config`): `validate FILE` decides "config or manifest" by
/// parsing the file with serde_yaml and looking for a top-level `folders` key. A config that
/// does not parse (BOM, not UTF-8, binary), is empty, is not a mapping or lacks `folders` is
/// validated as a *manifest*: the user gets "unknown key `folders`… missing `images`" instead
/// of the config's real problem (6 of the 49 fixtures: binary, bom-with-error, empty, latin1,
/// no-folders-at-all, not-a-mapping). Suggested fix: a `--config`-style flag to force the kind,
/// or treat a file as a config when it has any config top-level key, and strip a BOM first.
#[tokio::test(flavor = "multi_thread")]
async fn issue5_validate_reports_the_config_problem_of_every_bad_config_fixture() {
    let mut failures = Vec::new();
    for (name, _, text, expect) in validate_each_config().await {
        for want in &expect {
            if !text.contains(&want.needle) {
                failures.push(format!("{name}: output lacks {:?}:\n{text}", want.needle));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
