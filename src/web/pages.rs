//! The dashboard's GET handlers: each gathers its view from the pipeline, the store, the
//! activity sampler or the folders, and renders it with [`crate::web::views`]. The overview
//! costs O(runs active) like `status` (the store's counters and one record per run); a
//! manifest page streams that run's jobs once on the blocking pool.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use axum::Extension;
use axum::extract::{Form, Path as UrlPath, Query, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::Markup;
use serde::Deserialize;
use tracing::error;

use crate::activity::Disk;
use crate::admin::{self, ManifestView};
use crate::codes::StateName;
use crate::pipeline::Health;
use crate::store::records::{JobState, ManifestState};
use crate::text::count;
use crate::web::WebState;
use crate::web::auth::{Denied, Principal};
use crate::web::files::{self, Refused};
use crate::web::views::{self, Frame, Nav};

/// Jobs per manifest page.
pub const PAGE_SIZE: usize = 100;
/// Finished runs the overview lists.
pub const RECENT_ON_OVERVIEW: usize = 20;
/// Failed jobs the failures page shows by default, and at most.
pub const FAILURES_DEFAULT: usize = 200;
pub const FAILURES_MAX: usize = 2000;
/// Rejected files listed, and files looked at to find them.
pub const REJECTED_LIST: usize = 100;
pub const REJECTED_VISIT: usize = 20_000;
/// Bytes of an error file shown.
pub const ERROR_TEXT_BYTES: usize = 16 * 1024;

/// `?flash=…&n=…` after an action: a fixed message, never text from the URL.
#[derive(Debug, Default, Deserialize)]
pub struct FlashQuery {
    pub flash: Option<String>,
    pub n: Option<u64>,
    /// Jobs of the action the daemon refused (each named in its log).
    pub refused: Option<u64>,
}

impl FlashQuery {
    fn message(&self) -> Option<String> {
        let n = usize::try_from(self.n.unwrap_or(0)).unwrap_or(usize::MAX);
        let (done, verb) = match self.flash.as_deref()? {
            "retried" => (
                format!(
                    "Requeued {}; {} again now.",
                    count(n, "failed job"),
                    if n == 1 { "it runs" } else { "they run" }
                ),
                "requeued",
            ),
            "released" => (
                format!(
                    "Released {} held in doubt; {} submitted again.",
                    count(n, "job"),
                    if n == 1 { "it is" } else { "they are" }
                ),
                "released",
            ),
            "rerun" => {
                return Some(
                    "Moved the file back into the inbox; it is read again shortly.".to_owned(),
                );
            }
            _ => return None,
        };
        Some(match self.refused.unwrap_or(0) {
            0 => done,
            1 => format!(
                "{done} 1 other job was not {verb} (for example, a local input no longer in the inbox): the daemon's log names it (\"Dashboard action: some jobs were not requeued\")."
            ),
            r => format!(
                "{done} {r} other jobs were not {verb} (for example, a local input no longer in the inbox): the daemon's log names each (\"Dashboard action: some jobs were not requeued\")."
            ),
        })
    }
}

/// Renders a page in its frame.
pub fn render(
    state: &WebState,
    principal: &Principal,
    title: &str,
    nav: Nav,
    flash: Option<&str>,
    content: Markup,
) -> Html<String> {
    let csrf = state.auth.csrf_token(principal);
    let frame = Frame {
        title,
        user: principal
            .is_authenticated()
            .then_some(principal.user.as_str()),
        csrf: csrf.as_deref(),
        nav,
        flash,
    };
    Html(views::page(&frame, content).into_string())
}

/// A page saying what went wrong, with its status.
pub fn problem_page(
    state: &WebState,
    principal: &Principal,
    status: StatusCode,
    message: &str,
) -> Response {
    (
        status,
        render(
            state,
            principal,
            "Cannot show this",
            Nav::None,
            None,
            views::problem(message),
        ),
    )
        .into_response()
}

fn internal(state: &WebState, principal: &Principal, err: &dyn std::fmt::Display) -> Response {
    error!(error = %err, "Dashboard request failed");
    problem_page(
        state,
        principal,
        StatusCode::INTERNAL_SERVER_ERROR,
        "The store could not be read; see the daemon's log.",
    )
}

pub async fn overview(
    State(state): State<WebState>,
    Extension(principal): Extension<Principal>,
) -> Response {
    match overview_markup(&state).await {
        Ok(live) => render(
            &state,
            &principal,
            "Overview",
            Nav::Overview,
            None,
            views::overview(live),
        )
        .into_response(),
        Err(err) => internal(&state, &principal, &err),
    }
}

/// The overview's live part alone (what `/static/live.js` fetches).
pub async fn overview_partial(
    State(state): State<WebState>,
    Extension(principal): Extension<Principal>,
) -> Response {
    match overview_markup(&state).await {
        Ok(live) => Html(live.into_string()).into_response(),
        Err(err) => internal(&state, &principal, &err),
    }
}

async fn overview_markup(state: &WebState) -> Result<Markup, crate::store::StoreError> {
    let pipeline = &state.pipeline;
    let view = admin::status_view(pipeline.store(), Some(pipeline)).await?;
    // The store's rows, as `/status` counts them: the in-memory queue holds none while
    // submitting is paused (it said "Queued 0" beside a run with 3 queued).
    let (in_flight, queued) = view
        .daemon
        .as_ref()
        .map_or((0, 0), |d| (d.in_flight, d.queued));
    let phases = pipeline.phases();
    let counts = pipeline.store().counts();
    let snapshot = state.activity.snapshot();
    let mut active: Vec<(ManifestView, &'static str)> = Vec::new();
    let mut recent: Vec<ManifestView> = Vec::new();
    for m in view.manifests {
        if m.finished {
            recent.push(m);
        } else {
            let phase = phases.get(&m.id).map(|p| p.as_str()).unwrap_or(
                if m.in_doubt > 0 && m.in_flight + m.queued == 0 {
                    "held"
                } else {
                    "running"
                },
            );
            active.push((m, phase));
        }
    }
    recent.reverse();
    let older_not_listed = view.older_runs_not_listed || recent.len() > RECENT_ON_OVERVIEW;
    recent.truncate(RECENT_ON_OVERVIEW);
    let service = service_state(
        &pipeline.health(),
        pipeline.outage(),
        &snapshot.disk,
        active.is_empty(),
    );
    let overview = views::Overview {
        state: &service,
        activity: &snapshot,
        rate_limit_per_minute: pipeline.requests_per_minute_in_force(),
        in_flight,
        queued,
        held_in_doubt: counts.totals.in_doubt,
        in_doubt_events: counts.totals.in_doubt_events,
        active: &active,
        recent: &recent,
        older_not_listed,
        uptime: pipeline.uptime(),
    };
    Ok(views::overview_live(&overview))
}

/// The banner: paused by the API first, then the outbox's disk, then an API or bucket that
/// has not answered for a while (`outage`: how long, and why), else running.
pub fn service_state(
    health: &Health,
    outage: Option<(std::time::Duration, String)>,
    disk: &Disk,
    idle: bool,
) -> views::ServiceState {
    if let Health::Paused { reason, refusal } = health {
        let title = format!("Paused: {}", refusal.what());
        return views::ServiceState {
            code: "paused",
            title,
            detail: Some(format!(
                "Queued images wait and nothing is lost; {}. ({reason})",
                refusal.remedy()
            )),
        };
    }
    match disk {
        Disk::Full { .. } => views::ServiceState {
            code: "disk-full",
            title: "Disk full: outputs cannot be written".to_owned(),
            detail: Some(format!(
                "{}; jobs retry their writes for a while, then fail with `disk-full`. Free space on the outbox's disk.",
                disk.describe()
            )),
        },
        Disk::Unwritable { .. } => views::ServiceState {
            code: "outbox-unwritable",
            title: "The outbox cannot be written".to_owned(),
            detail: Some(disk.describe()),
        },
        Disk::Ok if outage.is_some() => {
            let (for_, why) = outage.unwrap_or_default();
            views::ServiceState {
                code: "waiting",
                title: format!("Waiting: no answer for {} s", for_.as_secs()),
                detail: Some(format!(
                    "Images in flight and queued wait and nothing is lost; work resumes by itself once it answers. ({why})"
                )),
            }
        }
        Disk::Ok => views::ServiceState {
            code: "running",
            title: "Running".to_owned(),
            detail: idle.then(|| "Nothing to do: drop a manifest into the inbox.".to_owned()),
        },
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct ManifestQuery {
    pub state: Option<String>,
    pub page: Option<usize>,
    pub flash: Option<String>,
    pub n: Option<u64>,
    /// Jobs of the action the daemon refused (each named in its log).
    pub refused: Option<u64>,
}

pub async fn manifest(
    State(state): State<WebState>,
    Extension(principal): Extension<Principal>,
    UrlPath(id): UrlPath<String>,
    Query(query): Query<ManifestQuery>,
) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return problem_page(&state, &principal, StatusCode::NOT_FOUND, "No such run.");
    };
    let store = state.pipeline.store();
    let m = match store.manifest(id).await {
        Ok(Some(m)) => m,
        Ok(None) => {
            return problem_page(&state, &principal, StatusCode::NOT_FOUND, "No such run.");
        }
        Err(err) => return internal(&state, &principal, &err),
    };
    let filter = match query.state.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match StateName::parse(s) {
            Some(name) => Some(name),
            None => {
                return problem_page(
                    &state,
                    &principal,
                    StatusCode::BAD_REQUEST,
                    "Unknown state; use queued, submitting, submitted, downloading, in-doubt, done or failed.",
                );
            }
        },
    };
    let counts = m
        .counts
        .or_else(|| store.counts_of_active(id))
        .unwrap_or_default();
    let matching = match filter {
        Some(name) => counts.of(name) as usize,
        None => counts.total() as usize,
    };
    let pages = matching.div_ceil(PAGE_SIZE).max(1);
    let page = query.page.unwrap_or(1).clamp(1, pages);
    let outbox = state.outbox.clone();
    let skip = (page - 1) * PAGE_SIZE;
    let rows: Result<Vec<views::JobRow>, crate::store::StoreError> = store
        .read(move |reader| {
            let mut rows = Vec::new();
            let mut seen = 0usize;
            reader.for_each_job_of_manifest(id, |job_id, job| {
                if filter.is_some_and(|f| f != job.state.name()) {
                    return Ok::<_, crate::store::StoreError>(());
                }
                seen += 1;
                if seen <= skip || rows.len() >= PAGE_SIZE {
                    return Ok(());
                }
                rows.push(job_row(job_id, &job, &outbox));
                Ok(())
            })?;
            Ok(rows)
        })
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(err) => return internal(&state, &principal, &err),
    };
    let (json_rel, csv_rel) = crate::report::rel_paths_of_run(
        &state.outbox,
        &m,
        matches!(m.state, ManifestState::Superseded { .. }),
    );
    let link = |rel: &Path| {
        let on_disk = state.outbox.join(rel);
        std::fs::symlink_metadata(&on_disk)
            .is_ok_and(|meta| meta.is_file())
            .then(|| format!("/report/{}", files::encode_path(&rel.to_string_lossy())))
    };
    let phase = state
        .pipeline
        .phases()
        .get(&id)
        .map(|p| p.as_str())
        .unwrap_or(match m.state {
            ManifestState::Running if counts.open() == 0 && counts.in_doubt > 0 => "held",
            ManifestState::Running => "running",
            ManifestState::Draining { .. } => "draining",
            ManifestState::Finished { .. } => "finished",
            ManifestState::Superseded { .. } => "superseded",
        });
    let registered = crate::store::utc_seconds(m.registered_at_ms);
    let view = views::ManifestPage {
        id,
        rel: &m.rel,
        phase,
        registered: &registered,
        sha256: &m.sha256,
        counts: &counts,
        state_filter: filter.map(StateName::as_str),
        rows: &rows,
        page,
        pages,
        report_json: link(&json_rel),
        report_csv: link(&csv_rel),
        // A run a newer one replaced offers no retry (its images are the newer run's).
        actions: state.may_act(&principal)
            && !crate::admin::run_replaced(state.pipeline.store(), id, &m)
                .await
                .unwrap_or(true),
    };
    let csrf = state.auth.csrf_token(&principal);
    let flash = FlashQuery {
        flash: query.flash.clone(),
        n: query.n,
        refused: query.refused,
    }
    .message();
    render(
        &state,
        &principal,
        &m.rel,
        Nav::None,
        flash.as_deref(),
        views::manifest(&view, csrf.as_deref()),
    )
    .into_response()
}

fn job_row(id: u64, job: &crate::store::records::JobV1, outbox: &Path) -> views::JobRow {
    let (code, message) = match &job.state {
        JobState::Failed { code, message, .. } => (
            Some(code.as_str().to_owned()),
            // Stores written before messages were kept redacted may hold a signature.
            Some(crate::text::redact_urls_in(message).into_owned()),
        ),
        JobState::InDoubt { .. } => (
            None,
            Some("The submit may have reached Claid: held for a human.".to_owned()),
        ),
        _ => (None, None),
    };
    let task_id = match &job.state {
        JobState::Submitted { task_id, .. } => Some(*task_id),
        JobState::Downloading { task_id, .. } | JobState::Done { task_id, .. } => *task_id,
        _ => None,
    };
    // Only the job's own file in the outbox: a storage output lives in its bucket (a file at
    // the same outbox path is another run's, and showing it would show another image).
    let local = outbox.join(&job.output_rel);
    let (has_output, object) = match &job.state {
        JobState::Done { path, .. } if path.contains("://") => (false, Some(path.clone())),
        JobState::Done { path, .. } => (
            (std::path::Path::new(path) == local || *path == job.output_rel)
                && std::fs::symlink_metadata(&local).is_ok_and(|m| m.is_file()),
            None,
        ),
        _ => (false, None),
    };
    views::JobRow {
        idx: job.idx,
        id,
        // A URL with a password or a signature in it is shown redacted, and not as a link.
        input_is_url: (job.input.starts_with("https://") || job.input.starts_with("http://"))
            && matches!(
                crate::text::redact_credentials(&job.input),
                std::borrow::Cow::Borrowed(_)
            ),
        input: crate::text::redact_credentials(&job.input).into_owned(),
        output: job.output_rel.clone(),
        state: if job.state.is_unchanged() {
            "unchanged"
        } else {
            job.state.kind()
        },
        code,
        message,
        has_output,
        object,
        task_id: if job.batch.is_some() { None } else { task_id },
        batch_id: job.batch,
        batch_images: job.batch.and(job.batch_images),
        requests: u64::from(job.attempts) + u64::from(job.polls),
        in_doubt: job.in_doubt,
    }
}

pub async fn rejected(
    State(state): State<WebState>,
    Extension(principal): Extension<Principal>,
    Query(flash): Query<FlashQuery>,
) -> Response {
    let root = state.rejected.clone();
    let rows = tokio::task::spawn_blocking(move || rejected_rows(&root))
        .await
        .unwrap_or_default();
    let csrf = state.auth.csrf_token(&principal);
    let message = flash.message();
    render(
        &state,
        &principal,
        "Rejected",
        Nav::Rejected,
        message.as_deref(),
        views::rejected(&rows, csrf.as_deref(), state.may_act(&principal)),
    )
    .into_response()
}

/// The rejected files that have an error file beside them, newest first. Links are not
/// followed; at most [`REJECTED_VISIT`] entries are looked at.
pub fn rejected_rows(root: &Path) -> Vec<views::RejectedRow> {
    let mut found: Vec<(std::time::SystemTime, views::RejectedRow)> = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    let mut visited = 0usize;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let limits = crate::filename::FsLimits::of(&dir);
        for entry in entries.flatten() {
            visited += 1;
            if visited > REJECTED_VISIT {
                break;
            }
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            if kind.is_dir() {
                stack.push(path);
                continue;
            }
            let name = entry.file_name();
            if !kind.is_file()
                || name
                    .to_string_lossy()
                    .ends_with(crate::filename::ERROR_SUFFIX)
            {
                continue;
            }
            let error_path = dir.join(crate::filename::error_file_name(&name, &limits));
            let Ok(meta) = std::fs::symlink_metadata(&error_path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let (error, cut) = read_start(&error_path, ERROR_TEXT_BYTES);
            // An error file of an older version may quote a URL with its password.
            let error = crate::text::redact_urls_in(&error).into_owned();
            let when = meta.modified().unwrap_or(UNIX_EPOCH);
            let rel = path
                .strip_prefix(root)
                .map(|r| r.to_string_lossy().into_owned())
                .unwrap_or_default();
            found.push((
                when,
                views::RejectedRow {
                    rel,
                    when: humantime::format_rfc3339_seconds(when).to_string(),
                    error,
                    cut,
                },
            ));
        }
    }
    found.sort_by_key(|row| std::cmp::Reverse(row.0));
    found.truncate(REJECTED_LIST);
    found.into_iter().map(|(_, row)| row).collect()
}

fn read_start(path: &Path, max: usize) -> (String, bool) {
    use std::io::Read;
    let mut bytes = Vec::new();
    let read =
        std::fs::File::open(path).and_then(|f| f.take(max as u64 + 1).read_to_end(&mut bytes));
    if read.is_err() {
        return (String::new(), false);
    }
    let cut = bytes.len() > max;
    bytes.truncate(max);
    (String::from_utf8_lossy(&bytes).into_owned(), cut)
}

#[derive(Debug, Default, Deserialize)]
pub struct FailuresQuery {
    pub code: Option<String>,
    pub limit: Option<usize>,
}

pub async fn failures(
    State(state): State<WebState>,
    Extension(principal): Extension<Principal>,
    Query(query): Query<FailuresQuery>,
) -> Response {
    let limit = query
        .limit
        .unwrap_or(FAILURES_DEFAULT)
        .clamp(1, FAILURES_MAX);
    let code_filter = query.code.clone().filter(|c| !c.is_empty());
    let store = state.pipeline.store();
    let view = match admin::status_view(store, None).await {
        Ok(view) => view,
        Err(err) => return internal(&state, &principal, &err),
    };
    let runs: Vec<(u64, String)> = view
        .manifests
        .iter()
        .filter(|m| m.failed > 0)
        .map(|m| (m.id, m.manifest.clone()))
        .collect();
    let wanted = code_filter.clone();
    type Scanned = (
        Vec<(u64, String, views::FailureRow)>,
        BTreeMap<String, usize>,
    );
    let scanned: Result<Scanned, crate::store::StoreError> = store
        .read(move |reader| {
            // The newest `limit` failures (of the wanted code) and every code's count.
            let mut rows: Vec<(u64, String, views::FailureRow)> = Vec::new();
            let mut codes: BTreeMap<String, usize> = BTreeMap::new();
            for (mid, rel) in &runs {
                reader.for_each_job_of_manifest(*mid, |_, job| {
                    let JobState::Failed { code, message, .. } = &job.state else {
                        return Ok::<_, crate::store::StoreError>(());
                    };
                    *codes.entry(code.as_str().to_owned()).or_default() += 1;
                    if wanted.as_deref().is_some_and(|w| w != code.as_str()) {
                        return Ok(());
                    }
                    rows.push((
                        job.updated_at_ms,
                        code.as_str().to_owned(),
                        views::FailureRow {
                            manifest_id: *mid,
                            manifest: rel.clone(),
                            input: crate::text::redact_credentials(&job.input).into_owned(),
                            output: job.output_rel.clone(),
                            message: crate::text::redact_urls_in(message).into_owned(),
                            when: crate::store::utc_seconds(job.updated_at_ms),
                        },
                    ));
                    if rows.len() >= 2 * limit {
                        rows.sort_by_key(|row| std::cmp::Reverse(row.0));
                        rows.truncate(limit);
                    }
                    Ok(())
                })?;
            }
            rows.sort_by_key(|row| std::cmp::Reverse(row.0));
            rows.truncate(limit);
            Ok((rows, codes))
        })
        .await;
    let (rows, codes) = match scanned {
        Ok(found) => found,
        Err(err) => return internal(&state, &principal, &err),
    };
    let mut groups: BTreeMap<String, Vec<views::FailureRow>> = BTreeMap::new();
    for (_, code, row) in rows {
        groups.entry(code).or_default().push(row);
    }
    let mut groups: Vec<(String, Vec<views::FailureRow>)> = groups.into_iter().collect();
    groups.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
    let codes: Vec<(String, usize)> = codes.into_iter().collect();
    render(
        &state,
        &principal,
        "Failures",
        Nav::Failures,
        None,
        views::failures(&groups, &codes, code_filter.as_deref(), limit),
    )
    .into_response()
}

/// `GET /thumb/<outbox-relative path>`: a PNG thumbnail of an output.
pub async fn thumbnail(
    State(state): State<WebState>,
    Extension(principal): Extension<Principal>,
    uri: Uri,
) -> Response {
    let rel = match files::rel_from_url(uri.path(), "/thumb/") {
        Ok(rel) => rel,
        Err(refused) => return refusal(&state, &principal, &refused),
    };
    match state.thumbs.get(rel).await {
        Ok(png) => (
            [
                (header::CONTENT_TYPE, "image/png"),
                (header::CACHE_CONTROL, "private, max-age=3600"),
            ],
            png,
        )
            .into_response(),
        Err(refused) => refusal(&state, &principal, &refused),
    }
}

/// `GET /file/<outbox-relative path>`: an output image itself.
pub async fn output_file(
    State(state): State<WebState>,
    Extension(principal): Extension<Principal>,
    uri: Uri,
) -> Response {
    let rel = match files::rel_from_url(uri.path(), "/file/") {
        Ok(rel) => rel,
        Err(refused) => return refusal(&state, &principal, &refused),
    };
    let ext = rel
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let content_type = match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "bmp" => "image/bmp",
        "tif" | "tiff" => "image/tiff",
        "avif" => "image/avif",
        _ => return refusal(&state, &principal, &Refused::NotAnImage),
    };
    serve_file(&state, &principal, rel, content_type, None).await
}

/// `GET /report/<outbox-relative path>`: a manifest's JSON or CSV report, as a download.
pub async fn report(
    State(state): State<WebState>,
    Extension(principal): Extension<Principal>,
    uri: Uri,
) -> Response {
    let rel = match files::rel_from_url(uri.path(), "/report/") {
        Ok(rel) => rel,
        Err(refused) => return refusal(&state, &principal, &refused),
    };
    let name = rel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let content_type = if name.ends_with(crate::filename::REPORT_JSON_SUFFIX) {
        "application/json"
    } else if name.ends_with(crate::filename::REPORT_CSV_SUFFIX) {
        "text/csv; charset=utf-8"
    } else {
        return refusal(&state, &principal, &Refused::NotFound);
    };
    serve_file(&state, &principal, rel, content_type, Some(&name)).await
}

async fn serve_file(
    state: &WebState,
    principal: &Principal,
    rel: PathBuf,
    content_type: &'static str,
    download_as: Option<&str>,
) -> Response {
    let outbox = state.outbox.clone();
    let opened = tokio::task::spawn_blocking(move || files::open_inside(&outbox, &rel))
        .await
        .unwrap_or(Err(Refused::NotFound));
    let (file, _) = match opened {
        Ok(found) => found,
        Err(refused) => return refusal(state, principal, &refused),
    };
    let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
    let mut res = (
        [(header::CONTENT_TYPE, content_type)],
        axum::body::Body::from_stream(stream),
    )
        .into_response();
    let headers = res.headers_mut();
    // A file from the outbox never runs as a page of the dashboard.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=60"),
    );
    if let Some(name) = download_as
        && let Ok(value) = HeaderValue::from_str(&content_disposition(name))
    {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    res
}

/// `attachment; filename="shoes.report.csv"; filename*=UTF-8''…` (non-ASCII and quotes only
/// in the encoded form).
fn content_disposition(name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{}",
        files::encode_path(name).replace('/', "%2F")
    )
}

fn refusal(state: &WebState, principal: &Principal, refused: &Refused) -> Response {
    let status = match refused {
        Refused::Unsafe(_) => StatusCode::BAD_REQUEST,
        Refused::NotFound => StatusCode::NOT_FOUND,
        Refused::NotAnImage => StatusCode::UNSUPPORTED_MEDIA_TYPE,
    };
    let message = match refused {
        Refused::Unsafe(why) => {
            format!("Refused: the path is not a plain path inside the outbox ({why}).")
        }
        Refused::NotFound => "No such file in the outbox.".to_owned(),
        Refused::NotAnImage => "That file is not an image a thumbnail can be made of.".to_owned(),
    };
    problem_page(state, principal, status, &message)
}

pub async fn not_found(
    State(state): State<WebState>,
    Extension(principal): Extension<Principal>,
) -> Response {
    problem_page(&state, &principal, StatusCode::NOT_FOUND, "No such page.")
}

#[derive(Debug, Default, Deserialize)]
pub struct LoginQuery {
    pub next: Option<String>,
}

pub async fn login_form(
    State(state): State<WebState>,
    Query(query): Query<LoginQuery>,
) -> Response {
    if !state.auth.has_users() {
        return Redirect::to("/").into_response();
    }
    let next = safe_next(query.next.as_deref());
    Html(views::login(&next, None).into_string()).into_response()
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub next: Option<String>,
}

pub async fn login(State(state): State<WebState>, Form(form): Form<LoginForm>) -> Response {
    if !state.auth.has_users() {
        return Redirect::to("/").into_response();
    }
    let next = safe_next(form.next.as_deref());
    match state.auth.verify(&form.username, &form.password).await {
        Ok(true) => {
            let cookie = state.auth.login(&form.username);
            let mut res = Redirect::to(&next).into_response();
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                res.headers_mut().insert(header::SET_COOKIE, value);
            }
            res
        }
        Ok(false) | Err(Denied::Wrong | Denied::Missing) => (
            StatusCode::UNAUTHORIZED,
            Html(views::login(&next, Some("Wrong user or password.")).into_string()),
        )
            .into_response(),
        Err(Denied::Throttled) => (
            StatusCode::TOO_MANY_REQUESTS,
            Html(
                views::login(
                    &next,
                    Some("Too many failed attempts for this user; wait a few minutes."),
                )
                .into_string(),
            ),
        )
            .into_response(),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: Option<String>,
}

pub async fn logout(
    State(state): State<WebState>,
    Extension(principal): Extension<Principal>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if !state.auth.csrf_ok(&principal, form.csrf.as_deref()) {
        return crate::web::actions::forged(&state, &principal);
    }
    let cookie = state.auth.logout(&principal);
    let mut res = Redirect::to("/login").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(header::SET_COOKIE, value);
    }
    res
}

/// Where to go after the login: a path on this site only (`/…`, not `//host`).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_owned(),
        _ => "/".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_only_sends_back_to_this_site() {
        assert_eq!(
            safe_next(Some("/manifests/3?state=failed")),
            "/manifests/3?state=failed"
        );
        for bad in [
            "//evil.example",
            "https://evil.example",
            "\\\\evil",
            "/\\evil",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad}");
        }
    }

    #[test]
    fn the_banner_names_the_cause() {
        let paused = Health::Paused {
            reason: "HTTP 402".into(),
            refusal: crate::pipeline::health::Refusal::Status(402),
        };
        let state = service_state(&paused, None, &Disk::Ok, false);
        assert_eq!(state.code, "paused");
        assert_eq!(
            state.title,
            "Paused: the Claid account is out of credits (402)"
        );
        let detail = state.detail.unwrap_or_default();
        assert!(
            detail.contains("once the Claid account has credits again"),
            "{detail}"
        );
        // A wrong `api.base_url` does not heal by itself: the banner says what does.
        let moved = Health::Paused {
            reason: "HTTP 404".into(),
            refusal: crate::pipeline::health::Refusal::Status(404),
        };
        let detail = service_state(&moved, None, &Disk::Ok, false)
            .detail
            .unwrap_or_default();
        assert!(detail.contains("restart the daemon"), "{detail}");
        let full = Disk::Full { free_bytes: 10 };
        assert_eq!(
            service_state(&Health::Healthy, None, &full, false).code,
            "disk-full"
        );
        assert_eq!(
            service_state(&Health::Healthy, None, &Disk::Ok, true).code,
            "running"
        );
        let away = Some((
            std::time::Duration::from_secs(42),
            "the API at api.claid.ai:443: connection refused".to_owned(),
        ));
        let waiting = service_state(&Health::Healthy, away, &Disk::Ok, false);
        assert_eq!(waiting.code, "waiting");
        assert!(waiting.title.contains("42 s"), "{}", waiting.title);
        assert!(
            waiting
                .detail
                .is_some_and(|d| d.contains("api.claid.ai:443")),
            "the detail names the host"
        );
    }
}
