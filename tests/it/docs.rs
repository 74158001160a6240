//! The documentation lives in this repository and matches the binary (issue 13): every flag of
//! the command line and every config key is documented, the README's shell blocks parse, its
//! exit-code table is the binary's, and nothing points at a file outside the repository.
//! (The help texts themselves are snapshots in `tests/it/snapshots/`, checked by `cli.rs`.)

use std::path::{Path, PathBuf};

use claid_hotfolder::{cli, config, exit};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// `README.md` and every `docs/*.md`, with their paths.
fn user_docs() -> Vec<(PathBuf, String)> {
    let mut paths = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    paths.extend(docs);
    paths
        .into_iter()
        .map(|path| {
            let text = read(&path);
            (path, text)
        })
        .collect()
}

/// Whether `--flag` stands in `text` as a whole flag (not as the start of `--flag-more`).
fn has_flag(text: &str, long: &str) -> bool {
    let needle = format!("--{long}");
    text.match_indices(&needle).any(|(at, _)| {
        !text[at + needle.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

#[test]
fn issue13_every_flag_of_the_command_line_is_in_the_docs() {
    let docs: String = user_docs().into_iter().map(|(_, text)| text).collect();
    let cmd = cli::documented_command();
    let (mut n_flags, mut missing) = (0, Vec::new());
    for sub in cmd.get_subcommands() {
        for arg in sub.get_arguments().filter(|arg| !arg.is_hide_set()) {
            let Some(long) = arg.get_long() else { continue };
            n_flags += 1;
            if !has_flag(&docs, long) {
                missing.push(format!("{} --{long}", sub.get_name()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "flags no README.md or docs/*.md names: {missing:?}"
    );
    assert!(n_flags > 40, "only {n_flags} flags seen");
}

/// The value at a dotted key of a YAML document (`api.poll.min`).
fn lookup<'v>(root: &'v serde_yaml::Value, dotted: &str) -> Option<&'v serde_yaml::Value> {
    dotted
        .split('.')
        .try_fold(root, |value, key| value.as_mapping()?.get(key))
}

#[test]
fn issue13_every_config_key_is_in_the_key_table_and_the_annotated_config() {
    let table = read(&repo().join("docs/configuration.md"));
    let annotated_text = read(&repo().join("config/claid-hotfolder.yaml"));
    let annotated: serde_yaml::Value = serde_yaml::from_str(&annotated_text).expect("yaml");
    let keys = config::known_keys();
    let mut missing = Vec::new();
    for key in &keys {
        let shown = key.replace('*', "NAME");
        if !table.contains(&format!("| `{shown}` |")) {
            missing.push(format!("{shown}: no row in docs/configuration.md"));
        }
        if !key.contains('*') && lookup(&annotated, key).is_none() {
            missing.push(format!("{key}: not set in config/claid-hotfolder.yaml"));
        }
    }
    assert!(missing.is_empty(), "{missing:#?}");
    assert!(keys.len() > 30, "only {} keys", keys.len());
    // And the table names no key the config does not know.
    let known: Vec<String> = keys.iter().map(|k| k.replace('*', "NAME")).collect();
    for line in table.lines().filter(|l| l.starts_with("| `")) {
        let key = line[3..].split('`').next().expect("a key");
        assert!(
            known.iter().any(|k| k == key),
            "docs/configuration.md: unknown key {key}"
        );
    }
}

/// The fenced blocks of `text` whose language is `sh`, `bash` or `shell`: (language, body).
fn shell_blocks(text: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut current, fence) {
            (None, Some(lang)) => {
                // Another language (or none) is read to its closing fence and dropped.
                let lang = lang.trim();
                let kept = ["sh", "bash", "shell"].contains(&lang);
                current = Some((if kept { lang } else { "" }.to_owned(), String::new()));
            }
            (Some(_), Some(_)) => {
                let (lang, body) = current.take().expect("open block");
                if !lang.is_empty() {
                    blocks.push((lang, body));
                }
            }
            (Some((_, body)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    blocks
}

#[test]
fn issue13_every_shell_block_of_the_docs_parses_under_sh_n() {
    let mut n_blocks = 0;
    for (path, text) in user_docs() {
        for (lang, body) in shell_blocks(&text) {
            n_blocks += 1;
            let shell = if lang == "bash" { "bash" } else { "sh" };
            let out = std::process::Command::new(shell)
                .arg("-n")
                .arg("-c")
                .arg(&body)
                .output()
                .expect("the shell runs");
            assert!(
                out.status.success(),
                "{}: a ```{lang} block does not parse under `{shell} -n`: {}\n{body}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    assert!(n_blocks >= 5, "only {n_blocks} shell blocks");
}

#[test]
fn issue13_the_readme_exit_code_table_is_the_binarys() {
    let readme = read(&repo().join("README.md"));
    let section = readme
        .split("\n## Exit codes\n")
        .nth(1)
        .expect("a section \"Exit codes\"")
        .split("\n## ")
        .next()
        .expect("text");
    let rows: Vec<(i32, String)> = section
        .lines()
        .filter_map(|line| {
            let mut cells = line.split('|').map(str::trim).skip(1);
            let code = cells.next()?.parse().ok()?;
            Some((code, cells.next()?.trim_matches('`').to_owned()))
        })
        .collect();
    let table: Vec<(i32, String)> = exit::TABLE
        .iter()
        .map(|(code, name, _)| {
            (
                *code,
                if *name == "-" {
                    String::new()
                } else {
                    (*name).to_owned()
                },
            )
        })
        .collect();
    assert_eq!(rows, table);
}

#[test]
fn issue13_the_docs_point_at_nothing_outside_the_repository() {
    let mut files = user_docs();
    for path in [
        "ARCHITECTURE.md",
        "config/claid-hotfolder.yaml",
        "config/demo.yaml",
        "systemd/claid-hotfolder.service",
        "packaging/claid-hotfolder.sysusers",
        "packaging/claid-hotfolder.tmpfile",
        "Cargo.toml",
    ] {
        files.push((repo().join(path), read(&repo().join(path))));
    }
    let mut problems = Vec::new();
    for (path, text) in &files {
        let name = path
            .strip_prefix(repo())
            .unwrap_or(path)
            .display()
            .to_string();
        for outside in [
            "../shared",
            "shared/",
            "SPEC.md",
            "SPEC §",
            "CONTRACT.md",
            "claid-spec",
        ] {
            if text.contains(outside) {
                problems.push(format!("{name} mentions {outside}"));
            }
        }
        // Markdown links to files: they must exist, relative to the linking file.
        for (at, _) in text.match_indices("](") {
            let target = text[at + 2..].split(')').next().unwrap_or_default();
            let target = target.split('#').next().unwrap_or_default();
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let dir = path.parent().expect("a folder");
            if !dir.join(target).exists() {
                problems.push(format!("{name} links to {target}, which does not exist"));
            }
        }
        // Files of the repository named in backticks (`docs/x.md`, `src/y.rs`) exist.
        for quoted in text.split('`').skip(1).step_by(2) {
            let looks_like_file = [
                "docs/",
                "src/",
                "config/",
                "packaging/",
                "systemd/",
                "tests/",
            ]
            .iter()
            .any(|dir| quoted.starts_with(dir))
                && !quoted.contains(['*', ' ', '<', '{']);
            if looks_like_file && !repo().join(quoted).exists() {
                problems.push(format!("{name} names {quoted}, which does not exist"));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
