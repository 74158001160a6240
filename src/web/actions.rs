//! The dashboard's actions, each a POST that needs `web.allow_actions: true`, an authenticated
//! user and the caller's CSRF token (bearer-token callers excepted), and each written to the log
//! as an audit line (`Dashboard action` with the user, the action and what it touched):
//!
//! - retry the failed jobs of a run (they are requeued, like `replay --failed` for that run);
//! - release the jobs of a run held in doubt (the form must confirm that Claid may bill them
//!   twice);
//! - re-run a rejected file: it moves back to its place in the inbox (never over a file there:
//!   the move picks `name.1.yaml` then) and its `.error.txt` is removed, so the watcher reads it
//!   again.

use axum::Extension;
use axum::extract::{Form, Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use tracing::{info, warn};

use crate::store::JobId;
use crate::store::records::JobState;
use crate::text::Escaped;
use crate::web::WebState;
use crate::web::auth::Principal;
use crate::web::pages::problem_page;

/// The fields an action form may carry.
#[derive(Debug, Default, Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    pub csrf: Option<String>,
    /// `yes` when the in-doubt warning was confirmed.
    #[serde(default)]
    pub confirm: Option<String>,
    /// The rejected file to re-run, relative to the rejected folder.
    #[serde(default)]
    pub file: Option<String>,
}

/// The answer to a POST without the caller's CSRF token.
pub fn forged(state: &WebState, principal: &Principal) -> Response {
    warn!(user = %Escaped::str(&principal.user), "Dashboard POST refused: missing or wrong CSRF token");
    problem_page(
        state,
        principal,
        StatusCode::FORBIDDEN,
        "Refused: the form was stale or did not come from this dashboard. Reload the page and try again.",
    )
}

/// The refusal of a caller that may not act, or of a form without its CSRF token.
fn check(state: &WebState, principal: &Principal, form: &ActionForm) -> Option<Response> {
    if !state.may_act(principal) {
        return Some(problem_page(
            state,
            principal,
            StatusCode::FORBIDDEN,
            "Actions are off: they need `web.allow_actions: true` and a logged-in user.",
        ));
    }
    if !state.auth.csrf_ok(principal, form.csrf.as_deref()) {
        return Some(forged(state, principal));
    }
    None
}

pub async fn retry_failed(
    State(state): State<WebState>,
    Extension(principal): Extension<Principal>,
    UrlPath(id): UrlPath<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    requeue(state, principal, id, form, Kind::Failed).await
}

pub async fn release_in_doubt(
    State(state): State<WebState>,
    Extension(principal): Extension<Principal>,
    UrlPath(id): UrlPath<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    requeue(state, principal, id, form, Kind::InDoubt).await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Failed,
    InDoubt,
}

async fn requeue(
    state: WebState,
    principal: Principal,
    id: String,
    form: ActionForm,
    kind: Kind,
) -> Response {
    if let Some(refused) = check(&state, &principal, &form) {
        return refused;
    }
    let Ok(id) = id.parse::<u64>() else {
        return problem_page(&state, &principal, StatusCode::NOT_FOUND, "No such run.");
    };
    if kind == Kind::InDoubt && form.confirm.as_deref() != Some("yes") {
        return problem_page(
            &state,
            &principal,
            StatusCode::BAD_REQUEST,
            "Confirm that Claid may bill these images twice, then release them.",
        );
    }
    let store = state.pipeline.store();
    let manifest = match store.manifest(id).await {
        Ok(Some(m)) => m,
        Ok(None) => return problem_page(&state, &principal, StatusCode::NOT_FOUND, "No such run."),
        Err(err) => {
            return problem_page(
                &state,
                &principal,
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("The store could not be read: {err}"),
            );
        }
    };
    match crate::admin::run_replaced(store, id, &manifest).await {
        Ok(false) => {}
        Ok(true) => {
            return problem_page(
                &state,
                &principal,
                StatusCode::CONFLICT,
                "A newer run of this manifest stands for its images (the file was saved or dropped again), so this run's jobs are not retried.",
            );
        }
        Err(err) => {
            return problem_page(
                &state,
                &principal,
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("The store could not be read: {err}"),
            );
        }
    }
    let ids = store
        .read(move |reader| {
            let mut ids: Vec<JobId> = Vec::new();
            reader.for_each_job_of_manifest(id, |job_id, job| {
                let pick = match kind {
                    Kind::Failed => job.state.name() == crate::codes::StateName::Failed,
                    Kind::InDoubt => matches!(job.state, JobState::InDoubt { .. }),
                };
                if pick {
                    ids.push(job_id);
                }
                Ok::<_, crate::store::StoreError>(())
            })?;
            Ok(ids)
        })
        .await;
    let requeued = match ids {
        Ok(ids) => state.pipeline.replay_checked(ids).await,
        Err(err) => Err(err),
    };
    let (n, refused) = match requeued {
        // Refused (another active manifest writes one of its outputs now, or a later one its
        // report): told as the CLI tells it, never as "requeued 0".
        Ok(replayed) if replayed.requeued == 0 && !replayed.refused.is_empty() => {
            info!(
                audit = true,
                user = %Escaped::str(&principal.user),
                action = match kind {
                    Kind::Failed => "retry-failed",
                    Kind::InDoubt => "release-in-doubt",
                },
                manifest = %Escaped::str(&manifest.rel),
                run = id,
                refused = %Escaped::str(&replayed.refused.join("; ")),
                "Dashboard action refused"
            );
            return problem_page(
                &state,
                &principal,
                StatusCode::CONFLICT,
                &format!("Not requeued: {}.", replayed.refused.join("; ")),
            );
        }
        Ok(replayed) => {
            if !replayed.refused.is_empty() {
                warn!(
                    manifest = %Escaped::str(&manifest.rel),
                    run = id,
                    refused = %Escaped::str(&replayed.refused.join("; ")),
                    "Dashboard action: some jobs were not requeued"
                );
            }
            if replayed.refetched > 0 {
                info!(
                    manifest = %Escaped::str(&manifest.rel),
                    run = id,
                    refetched = replayed.refetched,
                    "Dashboard action: results made but not written are fetched again (not billed again)"
                );
            }
            (replayed.requeued, replayed.refused.len())
        }
        Err(err) => {
            return problem_page(
                &state,
                &principal,
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("The jobs could not be requeued: {err}"),
            );
        }
    };
    let (action, flash) = match kind {
        Kind::Failed => ("retry-failed", "retried"),
        Kind::InDoubt => ("release-in-doubt", "released"),
    };
    info!(
        audit = true,
        user = %Escaped::str(&principal.user),
        action,
        manifest = %Escaped::str(&manifest.rel),
        run = id,
        jobs = n,
        refused,
        "Dashboard action"
    );
    let refused = match refused {
        0 => String::new(),
        r => format!("&refused={r}"),
    };
    Redirect::to(&format!("/manifests/{id}?flash={flash}&n={n}{refused}")).into_response()
}

pub async fn rerun_rejected(
    State(state): State<WebState>,
    Extension(principal): Extension<Principal>,
    Form(form): Form<ActionForm>,
) -> Response {
    if let Some(refused) = check(&state, &principal, &form) {
        return refused;
    }
    let Some(rel) = form.file.clone().filter(|f| !f.is_empty()) else {
        return problem_page(&state, &principal, StatusCode::BAD_REQUEST, "Which file?");
    };
    let (rejected, inbox) = (state.rejected.clone(), state.inbox.clone());
    let rel_for_move = rel.clone();
    let moved = tokio::task::spawn_blocking(move || rerun(&rejected, &inbox, &rel_for_move))
        .await
        .unwrap_or_else(|_| Err("the move was interrupted".to_owned()));
    match moved {
        Ok(dest) => {
            info!(
                audit = true,
                user = %Escaped::str(&principal.user),
                action = "rerun-rejected",
                file = %Escaped::str(&rel),
                to = %Escaped::path(&dest),
                "Dashboard action"
            );
            Redirect::to("/rejected?flash=rerun").into_response()
        }
        Err(why) => problem_page(
            &state,
            &principal,
            StatusCode::BAD_REQUEST,
            &format!("Cannot re-run this file: {why}"),
        ),
    }
}

/// Moves `rejected/<rel>` back to `inbox/<rel>` and removes its error file; returns where it
/// went.
fn rerun(
    rejected: &std::path::Path,
    inbox: &std::path::Path,
    rel: &str,
) -> Result<std::path::PathBuf, String> {
    let src = crate::output::safe_join(rejected, std::path::Path::new(rel)).map_err(|_| {
        format!(
            "`{}` is not a path inside the rejected folder (no `..`, no absolute path)",
            crate::text::escape(rel)
        )
    })?;
    let meta = std::fs::symlink_metadata(&src)
        .map_err(|_| "it is not in the rejected folder".to_owned())?;
    if !meta.is_file() {
        return Err("it is not a regular file".to_owned());
    }
    let name = src.file_name().unwrap_or_default().to_owned();
    if name.as_encoded_bytes().ends_with(b".error.txt") {
        return Err(
            "it is the error file of a rejected file: re-run the file it describes".to_owned(),
        );
    }
    let dir = src.parent().unwrap_or(rejected).to_path_buf();
    let error_file = dir.join(crate::filename::error_file_name(
        &name,
        &crate::filename::FsLimits::of(&dir),
    ));
    // A file rejected again was kept as `name.1.yaml` (a recipe's image as `name.1.png`): its
    // error file names where it came from, and it goes back there (outputs and reports under
    // its own name), when free.
    let error_text = std::fs::read_to_string(&error_file).ok();
    let origin = error_text.as_deref().and_then(|text| {
        let line = text.lines().next()?;
        let first = line
            .strip_prefix("manifest: ")
            .or_else(|| line.strip_prefix("image: "))?
            .to_owned();
        // Written escaped (a newline in the name as `\n`): the name itself, not its escape. One
        // that cannot be read back (a name that is no UTF-8, written `\xe9`) names no origin:
        // the file goes back under the name it has here, never under its escape.
        let first = if first.contains('\\') {
            crate::text::unescape(&first)?
        } else {
            first
        };
        let named = std::path::Path::new(&first);
        let rel = if named.is_absolute() {
            named.strip_prefix(inbox).ok()?.to_owned()
        } else {
            named.to_owned()
        };
        (!inbox.join(&rel).exists()).then_some(rel)
    });
    // The error file goes first: removed after the move, it could be the one the daemon had
    // just written for the file rejected again (the new reason was lost).
    if let Err(err) = std::fs::remove_file(&error_file)
        && err.kind() != std::io::ErrorKind::NotFound
    {
        warn!(error = %crate::os_error::OsCause(&err), file = %Escaped::path(&error_file), "Cannot remove the error file of a re-run file");
    }
    let moved = match origin {
        Some(rel) => crate::output::move_into(&src, inbox, &rel),
        None => crate::output::move_mirrored(rejected, &src, inbox),
    };
    match moved {
        Ok(dest) => Ok(dest),
        Err(err) => {
            // Not moved: the file stays rejected, with its reason.
            if let Some(text) = error_text {
                let _ = std::fs::write(&error_file, text);
            }
            Err(err.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rejected file whose name holds a newline goes back under that name (its error file
    /// names it escaped, and it was put back under the escape: `bad\nname.yaml`, literally).
    #[test]
    fn a_rerun_file_goes_back_under_its_own_name_not_its_escape() {
        let dir = tempfile::tempdir().expect("dir");
        let (rejected, inbox) = (dir.path().join("rejected"), dir.path().join("inbox"));
        std::fs::create_dir_all(rejected.join("team")).expect("rejected");
        std::fs::create_dir_all(&inbox).expect("inbox");
        let name = "team/bad\nname\\x.yaml";
        std::fs::write(rejected.join(name), b"images: []\n").expect("file");
        let error_file = rejected.join(crate::filename::error_file_name(
            std::path::Path::new(name).file_name().expect("name"),
            &crate::filename::FsLimits::of(&rejected),
        ));
        let error_file = rejected
            .join("team")
            .join(error_file.file_name().expect("name"));
        std::fs::write(
            &error_file,
            format!("manifest: {}\n\nproblems\n", Escaped::str(name)),
        )
        .expect("error file");
        let dest = rerun(&rejected, &inbox, name).expect("moved back");
        assert_eq!(dest, inbox.join(name));
        assert!(inbox.join(name).is_file());
        assert!(!error_file.exists(), "its error file is removed");
    }

    /// A recipe's image rejected twice (kept as `x.1.png`) goes back under its own name, which
    /// its error file gives, relative or absolute (it went back as `x.1.png`, and its output
    /// was `x.1.jpg`).
    #[test]
    fn a_recipe_image_rejected_twice_goes_back_under_its_own_name() {
        let dir = tempfile::tempdir().expect("dir");
        let (rejected, inbox) = (dir.path().join("rejected"), dir.path().join("inbox"));
        std::fs::create_dir_all(rejected.join("rec")).expect("rejected");
        std::fs::create_dir_all(inbox.join("rec")).expect("inbox");
        for (kept, named) in [
            ("rec/x.1.png", "rec/x.png".to_owned()),
            ("rec/y.1.png", inbox.join("rec/y.png").display().to_string()),
        ] {
            std::fs::write(rejected.join(kept), b"png").expect("file");
            std::fs::write(
                rejected.join(format!("{kept}.error.txt")),
                format!("image: {named}\nrecipe: rec/.claid.yaml\n\nthe reason\n"),
            )
            .expect("error file");
            let dest = rerun(&rejected, &inbox, kept).expect("moved back");
            assert_eq!(dest, inbox.join(kept.replace(".1.", ".")), "{kept}");
        }
    }

    /// An error file whose name cannot be read back (a name that is no UTF-8, written
    /// `caf\xe9.png`) names no origin: the file goes back under the name it has in
    /// `rejected/`, never under the escape taken literally (a file named `caf\xe9.png`).
    #[test]
    fn an_origin_that_cannot_be_read_back_is_not_taken_literally() {
        let dir = tempfile::tempdir().expect("dir");
        let (rejected, inbox) = (dir.path().join("rejected"), dir.path().join("inbox"));
        std::fs::create_dir_all(rejected.join("rec")).expect("rejected");
        std::fs::create_dir_all(inbox.join("rec")).expect("inbox");
        std::fs::write(rejected.join("rec/x.1.png"), b"png").expect("file");
        std::fs::write(
            rejected.join("rec/x.1.png.error.txt"),
            "image: rec/caf\\xe9.png\n\nthe reason\n",
        )
        .expect("error file");
        let dest = rerun(&rejected, &inbox, "rec/x.1.png").expect("moved back");
        assert_eq!(dest, inbox.join("rec/x.1.png"));
    }

    /// The error file is removed before the move (after it, it could be the one the daemon had
    /// just written for the file rejected again); a move that fails puts it back, so the
    /// file stays rejected with its reason.
    #[test]
    fn a_rerun_that_cannot_move_keeps_the_files_reason() {
        let dir = tempfile::tempdir().expect("dir");
        let (rejected, inbox) = (dir.path().join("rejected"), dir.path().join("inbox"));
        std::fs::create_dir_all(&rejected).expect("rejected");
        // The inbox is a file: nothing can move into it.
        std::fs::write(&inbox, b"not a folder").expect("inbox");
        std::fs::write(rejected.join("m.yaml"), b"images: []\n").expect("file");
        let error_file = rejected.join("m.yaml.error.txt");
        std::fs::write(&error_file, "manifest: m.yaml\n\nthe reason\n").expect("error file");
        assert!(rerun(&rejected, &inbox, "m.yaml").is_err());
        assert!(rejected.join("m.yaml").is_file());
        assert_eq!(
            std::fs::read_to_string(&error_file).expect("kept"),
            "manifest: m.yaml\n\nthe reason\n"
        );
    }
}
