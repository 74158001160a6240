//! The Debian package's inputs: the man pages and completions `generate-assets` writes from the
//! clap definition.

use std::path::Path;

use claid_hotfolder::cli::Cli;
use clap::CommandFactory;

use crate::support::cli;

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
