//! Tidy checks over the source tree (in the manner of rust-analyzer's `tidy.rs`): every module
//! says what it owns, ARCHITECTURE.md names exactly the modules that exist and exactly the
//! failure codes of `codes::FailureCode`, and no `unwrap()` is left outside tests.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use claid_hotfolder::codes::FailureCode;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `src/`, as `src/...` paths.
fn source_files() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root().join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("src readable").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(root()).expect("under the root");
                out.insert(rel.to_string_lossy().into_owned());
            }
        }
    }
    out
}

fn architecture() -> String {
    std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md")
}

/// The section of ARCHITECTURE.md under `heading`, up to the next heading of any level.
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text
        .find(heading)
        .unwrap_or_else(|| panic!("ARCHITECTURE.md has a `{heading}` section"));
    let body = &text[start + heading.len()..];
    let end = body.find("\n#").unwrap_or(body.len());
    &body[..end]
}

/// The backquoted words of a text.
fn backquoted(text: &str) -> BTreeSet<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_source_file_starts_with_a_module_doc() {
    let missing: Vec<String> = source_files()
        .into_iter()
        .filter(|rel| {
            let text = std::fs::read_to_string(root().join(rel)).expect("readable");
            !text.trim_start().starts_with("//!")
        })
        .collect();
    assert!(missing.is_empty(), "no `//!` doc first: {missing:?}");
}

#[test]
fn the_module_index_of_architecture_md_is_exactly_the_source_tree() {
    let text = architecture();
    let named: BTreeSet<String> = backquoted(section(&text, "## Module index"))
        .into_iter()
        .filter(|w| w.starts_with("src/") && w.ends_with(".rs"))
        .collect();
    let existing = source_files();
    let unnamed: Vec<_> = existing.difference(&named).collect();
    let gone: Vec<_> = named.difference(&existing).collect();
    assert!(
        unnamed.is_empty() && gone.is_empty(),
        "ARCHITECTURE.md's module index: not named {unnamed:?}; named but gone {gone:?}"
    );
    // Every `src/...` path the document mentions anywhere exists.
    let mentioned: Vec<String> = backquoted(&text)
        .into_iter()
        .filter(|w| w.starts_with("src/") && w.ends_with(".rs"))
        .filter(|w| !root().join(w).is_file())
        .collect();
    assert!(mentioned.is_empty(), "ARCHITECTURE.md names {mentioned:?}");
}

#[test]
fn the_failure_codes_of_architecture_md_are_exactly_the_enum() {
    let text = architecture();
    let listed = backquoted(section(&text, "### Failure codes"));
    let listed: BTreeSet<String> = listed
        .into_iter()
        .filter(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
        .collect();
    let codes: BTreeSet<String> = FailureCode::ALL
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    assert_eq!(
        listed, codes,
        "ARCHITECTURE.md \"Failure codes\" vs FailureCode::ALL"
    );
}

/// Source text before its first `#[cfg(test)]` (tests may unwrap).
fn without_tests(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |at| &text[..at])
}

#[test]
fn no_unwrap_outside_tests() {
    let mut found = Vec::new();
    for rel in source_files() {
        let text = std::fs::read_to_string(root().join(&rel)).expect("readable");
        for (n, line) in without_tests(&text).lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            if code.contains(".unwrap()") {
                found.push(format!("{rel}:{}", n + 1));
            }
        }
    }
    assert!(found.is_empty(), "`.unwrap()` outside tests: {found:?}");
}

/// The check above reads the tree it guards: a file that unwraps outside its tests is caught.
#[test]
fn the_unwrap_check_catches_an_unwrap() {
    let sample = "fn f() { x.unwrap(); }\n#[cfg(test)]\nmod tests { fn g() { y.unwrap(); } }\n";
    let before = without_tests(sample);
    assert!(before.contains(".unwrap()"));
    assert!(!before.contains("y.unwrap"));
    assert!(Path::new(&root()).join("src/lib.rs").is_file());
}
