//! The Debian package's inputs: the man pages and completions `generate-assets` writes from the
//! clap definition, and the unit, sysusers.d and tmpfiles.d entries, config and README agreeing
//! on the service user, the folders and the API key's path. (`packaging/check-deb.sh` checks the
//! built package itself; CI runs it.)

use std::path::{Path, PathBuf};

use claid_hotfolder::cli::{Cli, DEFAULT_CONFIG};
use clap::CommandFactory;

use crate::support::cli;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// Whether `word` stands in `text` on its own (not inside a longer name such as `run-x`).
fn has_word(text: &str, word: &str) -> bool {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .any(|token| token == word)
}

#[tokio::test(flavor = "multi_thread")]
async fn generate_assets_documents_and_completes_every_subcommand_and_flag_but_not_itself() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("assets");
    let (code, stdout, stderr) = cli(&["generate-assets", "--out", out.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let n_files = std::fs::read_dir(&out).unwrap().count();
    assert_eq!(
        stdout.lines().count(),
        n_files,
        "one line per file written: {stdout}"
    );

    let cmd = Cli::command();
    let (hidden, shown): (Vec<&clap::Command>, Vec<&clap::Command>) =
        cmd.get_subcommands().partition(|s| s.is_hide_set());
    let shown_names: Vec<&str> = shown.iter().map(|s| s.get_name()).collect();
    for name in [
        "run", "validate", "plan", "status", "jobs", "replay", "emulator",
    ] {
        assert!(shown_names.contains(&name), "{name} in {shown_names:?}");
    }
    assert!(
        hidden.iter().any(|s| s.get_name() == "generate-assets"),
        "generate-assets is hidden"
    );

    // roff writes `-` as `\-`.
    let unroff = |text: String| text.replace("\\-", "-");
    let main_page = unroff(read(&out.join("claid-hotfolder.1")));
    let bash = read(&out.join("claid-hotfolder.bash"));
    let zsh = read(&out.join("_claid-hotfolder"));
    let fish = read(&out.join("claid-hotfolder.fish"));
    assert_eq!(
        n_files,
        4 + shown.len(),
        "the main page, one page per subcommand, three completions"
    );
    for sub in &shown {
        let name = sub.get_name();
        assert!(
            main_page.contains(&format!("claid-hotfolder-{name}(1)")),
            "the man page names {name}"
        );
        let page = unroff(read(&out.join(format!("claid-hotfolder-{name}.1"))));
        assert!(has_word(&bash, name), "bash completes {name}");
        assert!(zsh.contains(&format!("'{name}:")), "zsh completes {name}");
        assert!(
            fish.contains(&format!("-a \"{name}\"")),
            "fish completes {name}"
        );
        let longs: Vec<&str> = sub
            .get_arguments()
            .filter(|arg| !arg.is_hide_set())
            .filter_map(|arg| arg.get_long())
            .collect();
        assert!(!longs.is_empty(), "{name} has flags");
        for long in longs {
            assert!(
                page.contains(&format!("--{long}")),
                "claid-hotfolder-{name}.1 documents --{long}"
            );
            assert!(
                bash.contains(&format!("--{long}")),
                "bash completes --{long}"
            );
            assert!(zsh.contains(&format!("--{long}")), "zsh completes --{long}");
            assert!(
                fish.contains(&format!("-l {long}")),
                "fish completes --{long}"
            );
        }
    }
    for sub in &hidden {
        let name = sub.get_name();
        assert!(!out.join(format!("claid-hotfolder-{name}.1")).exists());
        assert!(!has_word(&main_page, &format!("claid-hotfolder-{name}")));
        for (shell, text) in [("bash", &bash), ("zsh", &zsh), ("fish", &fish)] {
            assert!(!has_word(text, name), "{shell} offers the hidden {name}");
        }
    }
}

/// The values of `Key=` lines of a unit file, each space-separated word on its own.
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    let prefix = format!("{key}=");
    unit.lines()
        .filter_map(|line| line.strip_prefix(prefix.as_str()))
        .flat_map(str::split_whitespace)
        .collect()
}

/// The one value of a `Key=` line.
fn unit_value<'a>(unit: &'a str, key: &str) -> &'a str {
    let values = unit_values(unit, key);
    assert_eq!(values.len(), 1, "one {key}= in the unit: {values:?}");
    values[0]
}

/// A tmpfiles.d `d` line: mode, user and group of `path`.
fn tmpfiles_dir<'a>(tmpfiles: &'a str, path: &Path) -> Option<(&'a str, &'a str, &'a str)> {
    tmpfiles.lines().find_map(
        |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
            ["d", p, mode, user, group, ..] if Path::new(p) == path => Some((mode, user, group)),
            _ => None,
        },
    )
}

#[test]
fn unit_sysusers_tmpfiles_config_and_readme_agree_on_user_folders_and_key_path() {
    let unit = read(&repo().join("systemd/claid-hotfolder.service"));
    let sysusers = read(&repo().join("packaging/claid-hotfolder.sysusers"));
    let tmpfiles = read(&repo().join("packaging/claid-hotfolder.tmpfile"));
    let config_text = read(&repo().join("config/claid-hotfolder.yaml"));
    let config: serde_yaml::Value = serde_yaml::from_str(&config_text).unwrap();
    let readme = read(&repo().join("README.md"));
    let cargo_toml = read(&repo().join("Cargo.toml"));
    let key = |path: &[&str]| -> PathBuf {
        let value = path.iter().fold(&config, |v, k| &v[*k]);
        PathBuf::from(
            value
                .as_str()
                .unwrap_or_else(|| panic!("{path:?} in the config")),
        )
    };

    // The packaged unit points at the packaged binary and config.
    let exec: Vec<&str> = unit_values(&unit, "ExecStart");
    assert_eq!(
        exec,
        [
            "/usr/bin/claid-hotfolder",
            "run",
            "--config",
            DEFAULT_CONFIG
        ]
    );
    assert!(cargo_toml.contains(r#"["target/release/claid-hotfolder", "usr/bin/", "755"]"#));
    assert!(cargo_toml.contains(&format!(
        r#"["config/claid-hotfolder.yaml", "{}", "644"]"#,
        DEFAULT_CONFIG.trim_start_matches('/')
    )));

    // The service user: created by sysusers.d, named in the unit, owner of the folders.
    let user_line = sysusers
        .lines()
        .find(|l| l.starts_with("u "))
        .expect("a u line");
    let user = user_line.split_whitespace().nth(1).unwrap();
    assert_eq!(user, "claid-hotfolder");
    assert_eq!(unit_value(&unit, "User"), user);
    assert_eq!(unit_value(&unit, "Group"), user);

    // The API key: the README says where to put it, the unit hands it over, the config reads it.
    let credential = unit_value(&unit, "LoadCredential");
    let (name, source) = credential.split_once(':').expect("NAME:PATH");
    assert_eq!(source, "/etc/claid-hotfolder/claid-api-key");
    assert_eq!(
        key(&["api", "api_key_file"]),
        Path::new("/run/credentials/claid-hotfolder.service").join(name)
    );
    assert!(
        config_text.contains(source),
        "the config's comment names {source}"
    );
    assert!(readme.contains(source), "the README names {source}");
    let key_dir = Path::new(source).parent().unwrap();
    assert_eq!(
        tmpfiles_dir(&tmpfiles, key_dir),
        Some(("0750", "root", user)),
        "{} is readable by the service's group only",
        key_dir.display()
    );

    // The folders: created by tmpfiles.d for the user and its group, writable under the unit.
    let writable = unit_values(&unit, "ReadWritePaths");
    for folder in ["inbox", "outbox", "archive", "rejected"] {
        let path = key(&["folders", folder]);
        assert_eq!(
            tmpfiles_dir(&tmpfiles, &path),
            Some(("2770", user, user)),
            "folders.{folder}: {}",
            path.display()
        );
        assert!(
            writable.iter().any(|w| path.starts_with(w)),
            "folders.{folder} {} is under ReadWritePaths= {writable:?}",
            path.display()
        );
    }
    assert_eq!(
        key(&["folders", "state"]),
        Path::new("/var/lib").join(unit_value(&unit, "StateDirectory"))
    );
    assert_eq!(
        key(&["admin", "socket"]).parent().unwrap(),
        Path::new("/run").join(unit_value(&unit, "RuntimeDirectory"))
    );
}
