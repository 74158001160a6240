//! Property tests (proptest, 256 cases each): `manifest::load` never panics on arbitrary bytes
//! or YAML-ish text; an arbitrary `output` either fails validation or yields a relative path
//! that stays inside the outbox; `output::safe_join` never returns a path outside its root,
//! even with a symlink planted in it; report and error-file names derived from any manifest
//! name fit NAME_MAX with their temporary name, are deterministic and stay distinct.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Component, Path, PathBuf};

use claid_hotfolder::config::{Limits, Profile};
use claid_hotfolder::filename::{self, FsLimits};
use claid_hotfolder::manifest;
use claid_hotfolder::output;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::json;

fn cases() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        // No regression files written into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn profiles() -> BTreeMap<String, Profile> {
    let mut profiles = BTreeMap::new();
    profiles.insert(
        "p".to_owned(),
        Profile {
            operations: json!({"resizing": {"width": 100}}),
            output: None,
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

/// A temp inbox with a local image, to load one manifest from.
struct Inbox {
    _dir: tempfile::TempDir,
    inbox: PathBuf,
}

fn inbox() -> Inbox {
    let dir = tempfile::tempdir().expect("temp");
    let inbox = dir.path().join("inbox");
    std::fs::create_dir_all(inbox.join("photos")).expect("photos");
    std::fs::write(inbox.join("photos/a.png"), crate::support::png(2, 2)).expect("image");
    Inbox { _dir: dir, inbox }
}

impl Inbox {
    fn load(&self, name: &str, bytes: &[u8]) -> Result<manifest::ManifestSpec, String> {
        let path = self.inbox.join(name);
        std::fs::write(&path, bytes).expect("write");
        let ctx = manifest::LoadContext {
            inbox: &self.inbox,
            outbox: None,
            profiles: &profiles(),
            limits: &limits(),
            storages: &Default::default(),
        };
        manifest::load(&ctx, &path).map_err(|e| e.error_txt())
    }
}

/// Pieces of YAML and JSON syntax, keys, values and path tricks, glued at random.
const TOKENS: &[&str] = &[
    "images:",
    "\n",
    "  ",
    "  - ",
    "- ",
    "input: ",
    "output: ",
    "operations: ",
    "profile: p",
    "resizing: ",
    "width: ",
    "format: ",
    "png",
    "webp",
    "https://cdn.example.com/a.jpg",
    "storage://demo/x-10x10.png",
    "photos/a.png",
    "../",
    "/",
    "//",
    "./",
    "..",
    "[",
    "]",
    "{",
    "}",
    ", ",
    ": ",
    "? ",
    "&a ",
    "*a",
    "!t ",
    "#",
    "'",
    "\"",
    "|",
    ">",
    "---\n",
    "...\n",
    "\t",
    "\r\n",
    "null",
    "~",
    "100",
    "-1",
    "1e400",
    ".nan",
    "true",
    "\u{feff}",
    "\\",
    "%",
    "@",
    "`",
    "é",
    "\u{0}",
    "\u{7}",
    "\u{202e}",
];

fn yamlish() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => select(TOKENS).prop_map(str::to_owned),
            1 => "[a-z0-9./]{1,6}",
        ],
        0..80,
    )
    .prop_map(|parts| parts.concat())
}

/// Output names: path-like strings full of separators, dots and odd characters, and any
/// string at all.
fn output_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::collection::vec(
            prop_oneof![
                select(&["..", ".", "", "a", "b.png", "c.jpg", "/", "\\", "C:", "~", " ", "\u{0}", "\n", ".hidden", "x.tmp-1"][..])
                    .prop_map(str::to_owned),
                "[a-zA-Z0-9 ._:-]{1,8}",
            ],
            0..8,
        )
        .prop_map(|parts| parts.join("/")),
        1 => any::<String>(),
    ]
}

/// The checks every output path must pass: relative, only normal components, under the
/// manifest's folder, and inside the outbox once joined.
fn assert_contained(rel: &Path, out_dir: &str) -> Result<(), TestCaseError> {
    prop_assert!(!rel.is_absolute(), "absolute: {rel:?}");
    prop_assert!(
        rel.components().all(|c| matches!(c, Component::Normal(_))),
        "non-normal component: {rel:?}"
    );
    let text = rel.as_os_str().as_bytes();
    prop_assert!(
        !text.windows(2).any(|w| w == b"//"),
        "empty component: {rel:?}"
    );
    prop_assert!(!text.ends_with(b"/"), "trailing slash: {rel:?}");
    prop_assert!(!text.contains(&0), "NUL in {rel:?}");
    prop_assert!(rel.starts_with(out_dir), "{rel:?} not under {out_dir}");
    let outbox = Path::new("/srv/outbox");
    let joined = outbox.join(rel);
    prop_assert!(joined.starts_with(outbox), "{joined:?} leaves the outbox");
    prop_assert_eq!(
        joined.components().count(),
        outbox.components().count() + rel.components().count()
    );
    Ok(())
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn load_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048), json in any::<bool>()) {
        let inbox = inbox();
        let name = if json { "m.json" } else { "m.yaml" };
        let _ = inbox.load(name, &bytes);
    }

    #[test]
    fn load_never_panics_on_yamlish_text(text in yamlish(), json in any::<bool>()) {
        let inbox = inbox();
        let name = if json { "m.json" } else { "m.yaml" };
        if let Ok(spec) = inbox.load(name, text.as_bytes()) {
            for job in &spec.jobs {
                assert_contained(&job.output_rel, "m")?;
            }
        }
    }

    #[test]
    fn any_accepted_output_stays_inside_the_outbox(name in output_name(), nested in any::<bool>(), as_path in any::<bool>()) {
        let inbox = inbox();
        let output = if as_path { json!({"path": name}) } else { json!(name) };
        let text = json!({"images": [{"input": "https://cdn.example.com/a.jpg", "output": output}]}).to_string();
        let (rel_name, out_dir) = if nested { ("sub/m.json", "sub/m") } else { ("m.json", "m") };
        std::fs::create_dir_all(inbox.inbox.join("sub")).expect("sub");
        if let Ok(spec) = inbox.load(rel_name, text.as_bytes()) {
            prop_assert_eq!(spec.jobs.len(), 1);
            let rel = &spec.jobs[0].output_rel;
            assert_contained(rel, out_dir)?;
            // And the output module agrees it is safe.
            let outbox = tempfile::tempdir().expect("outbox");
            let joined = output::safe_join(outbox.path(), rel);
            prop_assert!(joined.is_ok(), "safe_join refused accepted output {rel:?}: {joined:?}");
        }
    }

    #[test]
    fn safe_join_never_leaves_its_root(parts in prop::collection::vec(
        prop_oneof![
            select(&["..", ".", "", "link", "dir", "a", "/", "x\\y", "\u{0}", "..."][..]).prop_map(str::to_owned),
            "[a-z.]{1,4}",
        ],
        0..6,
    ), raw in prop::collection::vec(any::<u8>(), 0..16), use_raw in any::<bool>()) {
        // root/dir is a real folder; root/link and root/dir/link are symlinks to a folder
        // outside the root.
        let base = tempfile::tempdir().expect("temp");
        let root = base.path().join("root");
        let outside = base.path().join("outside");
        std::fs::create_dir_all(root.join("dir")).expect("dir");
        std::fs::create_dir_all(&outside).expect("outside");
        std::os::unix::fs::symlink(&outside, root.join("link")).expect("link");
        std::os::unix::fs::symlink(&outside, root.join("dir/link")).expect("link");
        let rel = if use_raw {
            PathBuf::from(OsStr::from_bytes(&raw))
        } else {
            PathBuf::from(parts.join("/"))
        };
        if let Ok(path) = output::safe_join(&root, &rel) {
            prop_assert!(path.starts_with(&root), "{path:?} outside {root:?}");
            let under = path.strip_prefix(&root).expect("prefix");
            prop_assert!(under.components().count() > 0, "{rel:?} names the root itself");
            prop_assert!(
                under.components().all(|c| matches!(c, Component::Normal(_))),
                "{rel:?} → {path:?}"
            );
            // No existing ancestor between the root and the path is a symlink.
            let mut at = root.clone();
            for component in under.components() {
                at.push(component);
                if let Ok(meta) = std::fs::symlink_metadata(&at) {
                    prop_assert!(!meta.file_type().is_symlink(), "{rel:?} goes through symlink {at:?}");
                }
            }
        }
    }
}

/// File-name bytes: anything but `/` and NUL.
fn name_bytes(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        any::<u8>().prop_filter("a name byte", |b| *b != b'/' && *b != 0),
        len,
    )
}

fn limits_of(name_max: usize) -> FsLimits {
    FsLimits {
        name_max,
        path_max: filename::PATH_MAX,
        asked: None,
    }
}

proptest! {
    #![proptest_config(cases())]

    /// A report or error-file name, shortened or not, fits NAME_MAX together with the
    /// temporary name `output` writes it under first, keeps its suffix, and is the same every
    /// time; a UTF-8 name stays UTF-8 (no character is cut in half).
    #[test]
    fn derived_names_fit_name_max_with_the_temporary_name(
        base in name_bytes(1..700),
        text in "[^/\\p{C}]{1,300}",
        name_max in 64usize..=1024,
        suffix in select(&[filename::ERROR_SUFFIX, filename::REPORT_JSON_SUFFIX, filename::REPORT_CSV_SUFFIX][..]),
    ) {
        let limits = limits_of(name_max);
        for base in [OsStr::from_bytes(&base), OsStr::new(&text)] {
            let name = filename::derived_name(base, suffix, &limits);
            prop_assert!(
                output::tmp_name(&name).len() <= name_max,
                "{} bytes with its temporary name, NAME_MAX {name_max}",
                output::tmp_name(&name).len()
            );
            prop_assert!(name.as_bytes().ends_with(suffix.as_bytes()));
            prop_assert!(!name.as_bytes().contains(&b'/') && !name.as_bytes().contains(&0));
            prop_assert_eq!(&filename::derived_name(base, suffix, &limits), &name);
            if base.to_str().is_some() {
                prop_assert!(name.to_str().is_some(), "{name:?} is no longer UTF-8");
            }
        }
        let reports = filename::report_names(Path::new(OsStr::new(&text)), &limits);
        for report in [&reports.json, &reports.csv] {
            let name = report.file_name().expect("a name");
            prop_assert!(output::tmp_name(name).len() <= name_max);
        }
    }

    /// Two different long names that share their first 300 bytes get different names.
    #[test]
    fn distinct_long_names_stay_distinct(
        common in name_bytes(300..400),
        tail_a in name_bytes(0..20),
        tail_b in name_bytes(0..20),
    ) {
        prop_assume!(tail_a != tail_b);
        let limits = limits_of(255);
        let a = [common.as_slice(), &tail_a].concat();
        let b = [common.as_slice(), &tail_b].concat();
        prop_assert_ne!(
            filename::error_file_name(OsStr::from_bytes(&a), &limits),
            filename::error_file_name(OsStr::from_bytes(&b), &limits)
        );
    }
}

/// `filename::TMP_NAME_OVERHEAD` is what `output::tmp_name` really adds (the name checks of
/// validation and of the derived names count on it).
#[test]
fn the_temporary_name_overhead_is_what_output_adds() {
    for name in ["a", "shoes.report.json", &"x".repeat(200)] {
        assert_eq!(
            output::tmp_name(OsStr::new(name)).len(),
            name.len() + filename::TMP_NAME_OVERHEAD,
            "{name}"
        );
    }
}

/// Ten thousand names that differ only after the part a shortened name keeps all get a name
/// of their own, and a short name is never shortened.
#[test]
fn shortened_names_of_a_family_are_all_distinct() {
    let limits = limits_of(255);
    let common = "catalogue-".repeat(30);
    let names: std::collections::HashSet<_> = (0..10_000)
        .map(|i| filename::error_file_name(OsStr::new(&format!("{common}{i}.yaml")), &limits))
        .collect();
    assert_eq!(names.len(), 10_000);
    assert_eq!(
        filename::error_file_name(OsStr::new("shoes.yaml"), &limits),
        "shoes.yaml.error.txt"
    );
}
