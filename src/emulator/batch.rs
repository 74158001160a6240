//! The batch endpoints (`POST …/image/edit/batch`, `GET …/image/edit/batch/{id}`, docs/claid-api.md
//! §4.3 and §6): validation of the four input forms, storage folders listed at submit (direct
//! children, or every descendant when `recursive`), per-image processing with the same fetch,
//! imaging and delivery code as async tasks, at most `batch_parallelism` images of one batch at
//! a time, and the batch's walk ACCEPTED → PROCESSING → DONE | ERROR.
//!
//! Assumptions where Claid is silent (documented in `docs/emulator.md`): a batch ends when its
//! last image ends; it is DONE when at least one image succeeded (with `errors` for the others)
//! and ERROR when none did; each output is named after its input (basename, extension of the
//! output format) and that name is the last path segment of its `tmp_url`, or its file name in
//! the destination folder; a folder input takes the objects with an image extension; each error
//! names its input URL at the start of `error`. Async tasks and batches share one id sequence.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::claid::request::{self, EditRequest, FieldError, InputRule, OutputFormat};
use crate::claid::wire::{
    BatchInput, BatchResultItem, BatchTask, Envelope, TaskError, TaskStatus, batch_output_name,
};
use crate::emulator::server::{
    AppState, DropConnection, OutputName, Prefix, api_error, delay_submit_response, deliver,
    garbled_answer, host_of, json_body, lock, maybe_delay_poll, now_rfc3339, pipeline_not_found,
    process_input, random_hex, task_id, validation_error,
};
use crate::emulator::stats::submit_key;
use crate::emulator::storage::{self, Backing};

/// Most images one batch may hold (the emulator's own limit; Claid publishes none).
pub const MAX_BATCH_IMAGES: usize = 10_000;

/// One batch, as the poll answer shows it.
pub struct Batch {
    created_at: String,
    /// The submitted body, echoed in every answer and webhook.
    request: Value,
    result_url: String,
    /// Before this instant the batch shows ACCEPTED, after it PROCESSING (until its outcome).
    processing_at: Instant,
    /// Set once the last image has ended.
    outcome: Option<BatchOutcome>,
}

struct BatchOutcome {
    results: Vec<BatchResultItem>,
    errors: Vec<TaskError>,
}

/// One image of a batch, its random decisions drawn at submit time (so a seed reproduces them).
struct ImagePlan {
    input: String,
    latency: Duration,
    forced_error: bool,
    renamed: bool,
}

/// What the images of one batch have done so far (for [`crate::emulator::BatchTrace`]).
#[derive(Default)]
struct Progress {
    running: u64,
    peak: u64,
    ended: u64,
    waited: u64,
    first_start: Option<Instant>,
    last_end: Option<Instant>,
}

impl Progress {
    fn start(progress: &Mutex<Progress>) -> Instant {
        let now = Instant::now();
        let mut p = lock(progress);
        p.running += 1;
        p.peak = p.peak.max(p.running);
        if p.ended > 0 {
            p.waited += 1;
        }
        p.first_start.get_or_insert(now);
        now
    }

    fn end(progress: &Mutex<Progress>) {
        let mut p = lock(progress);
        p.running = p.running.saturating_sub(1);
        p.ended += 1;
        p.last_end = Some(Instant::now());
    }
}

/// `POST …/image/edit/batch`.
pub async fn submit(
    State(state): State<Arc<AppState>>,
    Extension(Prefix(prefix)): Extension<Prefix>,
    drop_conn: Option<Extension<DropConnection>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let value = match json_body(&headers, body) {
        Ok(value) => value,
        Err(response) => return *response,
    };
    let (req, images) = match validated(&value) {
        Ok(ok) => ok,
        Err(response) => return *response,
    };
    let inputs = match resolve_images(&state, &req, images).await {
        Ok(inputs) => inputs,
        Err(response) => return *response,
    };
    if let Some(response) = state.submit_rate_limited() {
        return response;
    }
    let host = host_of(&headers, state.local_addr);
    let id = state.next_id.fetch_add(1, Ordering::SeqCst);
    let result_url = state.scenario.result_url.url(&host, prefix, "batch", id);
    let mut names = HashSet::new();
    let colliding_names = inputs
        .iter()
        .filter(|input| !names.insert(batch_output_name(input, "")))
        .count() as u64;
    let keys: Vec<String> = inputs
        .iter()
        .map(|input| {
            submit_key(&json!({
                "input": input,
                "operations": value.get("operations"),
                "output": value.get("output"),
            }))
        })
        .collect();
    let images: Vec<ImagePlan> = inputs
        .into_iter()
        .map(|input| ImagePlan {
            latency: state.sample_latency(),
            forced_error: state.roll(state.scenario.error_share),
            renamed: state.roll(state.scenario.batch_rename_share),
            input,
        })
        .collect();
    let dropped = state.drops_answer();
    let first_latency = images.first().map_or(Duration::ZERO, |image| image.latency);
    let created_at = now_rfc3339();
    lock(&state.batches).insert(
        id,
        Batch {
            created_at: created_at.clone(),
            request: state.echoed(&value),
            result_url: result_url.clone(),
            processing_at: Instant::now() + first_latency / 4,
            outcome: None,
        },
    );
    state.recorder.batch_submitted(id, keys, colliding_names);
    tokio::spawn(run(Arc::clone(&state), id, req, images, host));

    if dropped {
        if let Some(Extension(conn)) = drop_conn {
            state.recorder.update(|s| s.dropped_responses += 1);
            return conn.drop_response().await;
        }
    }
    if let Some(page) = garbled_answer(&state) {
        return page;
    }
    delay_submit_response(&state).await;
    let accepted = BatchTask {
        id,
        status: TaskStatus::Accepted,
        result_url,
        created_at,
        request: state.echoed(&value),
        errors: Vec::new(),
        results: Vec::new(),
        unreadable_results: 0,
    };
    Json(Envelope { data: accepted }).into_response()
}

/// `GET …/image/edit/batch/{id}`.
pub async fn poll(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    state.recorder.update(|s| s.batch_polls += 1);
    maybe_delay_poll(&state).await;
    let id = match task_id(id) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    let batches = lock(&state.batches);
    let Some(batch) = batches.get(&id) else {
        drop(batches);
        return pipeline_not_found();
    };
    let mut view = batch_view(id, batch);
    drop(batches);
    if let Some(response) = state.poll_rate_limited(format!("batch:{id}")) {
        return response;
    }
    if let Some(response) = state.poll_refused(format!("batch:{id}")) {
        return response;
    }
    if state.poll_not_found(format!("batch:{id}")) {
        return pipeline_not_found();
    }
    if state.unsettled_once(format!("poll:{id}")) {
        return pipeline_not_found();
    }
    if view.status == TaskStatus::Done && state.unsettled_once(format!("done:{id}")) {
        // Every other batch (odd ids) of more than one result lacks only its last one: a
        // DONE whose results are attached one by one.
        if id % 2 == 1 && view.results.len() > 1 {
            view.results.pop();
        } else {
            view.results.clear();
            view.errors.clear();
        }
    }
    state.recorder.update(|s| {
        if let Some(trace) = s.batches.get_mut(&id) {
            trace.polls += 1;
        }
    });
    Json(Envelope { data: view }).into_response()
}

/// The `data` of a poll answer for batch `id`.
fn batch_view(id: u64, batch: &Batch) -> BatchTask {
    let (status, errors, results) = match &batch.outcome {
        Some(outcome) if outcome.results.is_empty() => {
            (TaskStatus::Error, outcome.errors.clone(), Vec::new())
        }
        Some(outcome) => (
            TaskStatus::Done,
            outcome.errors.clone(),
            outcome.results.clone(),
        ),
        None if Instant::now() >= batch.processing_at => {
            (TaskStatus::Processing, Vec::new(), Vec::new())
        }
        None => (TaskStatus::Accepted, Vec::new(), Vec::new()),
    };
    BatchTask {
        id,
        status,
        result_url: batch.result_url.clone(),
        created_at: batch.created_at.clone(),
        request: batch.request.clone(),
        errors,
        results,
        unreadable_results: 0,
    }
}

const INPUT_SHAPES: &str =
    "a list of image URLs, one image URL, or {\"source\": <folder>, \"recursive\": <bool>}";

/// The images a batch body names.
#[derive(Debug, PartialEq)]
enum Images {
    /// The list and single-image forms.
    Urls(Vec<String>),
    /// A storage folder: `"storage://NAME/folder/"` (`field` = `input`) or `{source, recursive}`
    /// (`field` = `input.source`).
    Folder {
        uri: String,
        recursive: bool,
        field: &'static str,
    },
}

/// Checks the `storage://` references of a valid batch body against the connectors (422 with
/// every problem) and lists a folder input (400 when the listing fails, 422 when it holds no
/// image); returns the image URLs.
async fn resolve_images(
    state: &AppState,
    req: &EditRequest,
    images: Images,
) -> Result<Vec<String>, Box<Response>> {
    let registry = &state.storages;
    let mut errors: Vec<FieldError> = Vec::new();
    if let Some(destination) = &req.output.destination {
        errors.extend(registry.check_destination(destination));
    }
    match &images {
        Images::Urls(urls) => {
            let listed = urls.len() > 1;
            for (idx, url) in urls.iter().enumerate() {
                let field = if listed {
                    format!("input.{idx}")
                } else {
                    "input".to_owned()
                };
                errors.extend(registry.check_input(&field, url));
            }
        }
        Images::Folder { uri, field, .. } => errors.extend(registry.check_folder(field, uri)),
    }
    if !errors.is_empty() {
        return Err(Box::new(validation_error(&errors)));
    }
    let (uri, recursive, field) = match images {
        Images::Urls(urls) => return Ok(urls),
        Images::Folder {
            uri,
            recursive,
            field,
        } => (uri, recursive, field),
    };
    let (name, folder) = storage::split_uri(&uri).unwrap_or_default();
    let Backing::Bucket(bucket) = registry.backing(name) else {
        // Checked above: the connector was disconnected in between.
        return Err(Box::new(validation_error(&[FieldError {
            path: field.to_owned(),
            message: format!("storage {name:?} is no longer connected"),
        }])));
    };
    let keys = storage::list_images(&state.recorder, &bucket, folder, recursive)
        .await
        .map_err(|err| {
            Box::new(api_error(
                axum::http::StatusCode::BAD_REQUEST,
                "1001",
                "storage",
                format!("Cannot list the folder {uri}: {err}."),
            ))
        })?;
    let problem = if keys.is_empty() {
        Some(format!(
            "the folder {uri} holds no images (png, jpg, jpeg, webp, gif, bmp, tif, tiff, avif or heic){}",
            if recursive {
                ""
            } else {
                " directly under it (set recursive: true for subfolders)"
            }
        ))
    } else if keys.len() > MAX_BATCH_IMAGES {
        Some(format!(
            "the folder {uri} holds {} images; the emulator takes at most {MAX_BATCH_IMAGES} per batch",
            keys.len()
        ))
    } else {
        None
    };
    if let Some(message) = problem {
        return Err(Box::new(validation_error(&[FieldError {
            path: field.to_owned(),
            message,
        }])));
    }
    Ok(keys
        .into_iter()
        .map(|key| format!("storage://{name}/{key}"))
        .collect())
}

/// Validates a batch body with the async edit's validator (`operations`, `output`) plus the
/// batch input forms; returns the request and its images, or the 422 with every problem.
fn validated(body: &Value) -> Result<(EditRequest, Images), Box<Response>> {
    let mut rest = body.clone();
    let input = rest.as_object_mut().and_then(|map| map.remove("input"));
    let (req, mut errors) = match request::validate(&rest, InputRule::Forbidden) {
        Ok(req) => (Some(req), Vec::new()),
        Err(errors) => (None, errors),
    };
    let problem = |message: String| FieldError {
        path: "input".to_owned(),
        message,
    };
    let mut images = Images::Urls(Vec::new());
    match input.map(serde_json::from_value::<BatchInput>) {
        None if body.is_object() => errors.push(problem(format!("required: {INPUT_SHAPES}"))),
        None => {} // The body is not an object; the validator said so.
        Some(Err(_)) => errors.push(problem(format!("must be {INPUT_SHAPES}"))),
        Some(Ok(BatchInput::Source(source))) => {
            images = Images::Folder {
                uri: folder_uri(&source.source),
                recursive: source.recursive,
                field: "input.source",
            };
        }
        Some(Ok(BatchInput::One(uri))) if uri.ends_with('/') => {
            images = Images::Folder {
                uri,
                recursive: false,
                field: "input",
            };
        }
        Some(Ok(input)) => {
            let listed = matches!(input, BatchInput::Urls(_));
            let given = input.urls().unwrap_or_default();
            if given.is_empty() {
                errors.push(problem("must hold at least one image URL".to_owned()));
            } else if given.len() > MAX_BATCH_IMAGES {
                errors.push(problem(format!(
                    "holds {} images; the emulator takes at most {MAX_BATCH_IMAGES} per batch",
                    given.len()
                )));
            }
            for (idx, url) in given.iter().enumerate() {
                let path = if listed {
                    format!("input.{idx}")
                } else {
                    "input".to_owned()
                };
                let single = json!({"input": url, "operations": {}});
                if let Err(problems) = request::validate(&single, InputRule::Required) {
                    errors.extend(problems.into_iter().map(|p| FieldError {
                        path: p.path.replacen("input", &path, 1),
                        message: p.message,
                    }));
                }
            }
            images = Images::Urls(given.into_iter().map(str::to_owned).collect());
        }
    }
    if req
        .as_ref()
        .is_some_and(|req| req.output_format() == OutputFormat::Avif)
    {
        errors.push(FieldError {
            path: "output.format".to_owned(),
            message: "avif output is not supported by the emulator (use jpeg, png, webp or tiff)"
                .to_owned(),
        });
    }
    match req {
        Some(req) if errors.is_empty() => Ok((req, images)),
        _ => Err(Box::new(validation_error(&errors))),
    }
}

/// A `{source}` folder, ending in `/` whether or not it was written so.
fn folder_uri(source: &str) -> String {
    if source.ends_with('/') {
        source.to_owned()
    } else {
        format!("{source}/")
    }
}

/// Processes the images of batch `id`, at most `batch_parallelism` at once, then records the
/// outcome and announces it.
async fn run(
    state: Arc<AppState>,
    id: u64,
    req: EditRequest,
    images: Vec<ImagePlan>,
    host: String,
) {
    let parallelism = state.scenario.batch_parallelism.max(1);
    let progress = Mutex::new(Progress::default());
    let mut outcomes: Vec<(usize, Result<Processed, TaskError>)> =
        futures_util::stream::iter(images.into_iter().enumerate())
            .map(|(idx, plan)| {
                let (state, req, host, progress) = (&state, &req, &host, &progress);
                async move { (idx, process_image(state, req, plan, host, progress).await) }
            })
            .buffer_unordered(parallelism)
            .collect()
            .await;
    outcomes.sort_by_key(|(idx, _)| *idx);
    let mut results = Vec::new();
    let mut errors = Vec::new();
    let mut renamed = 0;
    for (_, outcome) in outcomes {
        match outcome {
            Ok(processed) => {
                renamed += u64::from(processed.renamed);
                results.push(processed.item);
            }
            Err(error) => errors.push(error),
        }
    }
    if state.scenario.shuffle_results {
        state.shuffle(&mut results);
        state.shuffle(&mut errors);
    }
    if state.scenario.repeat_batch_result
        && results.len() >= 2
        && let Some(first) = results.first().cloned()
        && let Some(last) = results.last_mut()
    {
        *last = first;
    }
    let failed = errors.len() as u64;
    let p = progress
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let busy = match (p.first_start, p.last_end) {
        (Some(start), Some(end)) => end.saturating_duration_since(start),
        _ => Duration::ZERO,
    };
    state.recorder.update(|s| {
        s.batch_images_failed += failed;
        s.batch_results_renamed += renamed;
        if let Some(trace) = s.batches.get_mut(&id) {
            trace.failed = failed;
            trace.renamed = renamed;
            trace.peak_parallel = p.peak;
            trace.waited_for_slot = p.waited;
            trace.busy_ms = u64::try_from(busy.as_millis()).unwrap_or(u64::MAX);
        }
    });
    let view = {
        let mut batches = lock(&state.batches);
        batches.get_mut(&id).map(|batch| {
            batch.outcome = Some(BatchOutcome { results, errors });
            batch_view(id, batch)
        })
    };
    if let Some(view) = view {
        match serde_json::to_value(&view) {
            Ok(value) => state.announce(value),
            Err(err) => tracing::warn!(error = %err, "Cannot serialize a batch for its webhook"),
        }
    }
}

/// A processed image of a batch.
struct Processed {
    item: BatchResultItem,
    /// Its output was given a name that matches no input (the rename fault).
    renamed: bool,
}

/// Fetches and renders one image of a batch, holding its slot for at least its latency.
async fn process_image(
    state: &AppState,
    req: &EditRequest,
    plan: ImagePlan,
    host: &str,
    progress: &Mutex<Progress>,
) -> Result<Processed, TaskError> {
    let started = Progress::start(progress);
    let (rendered, ()) = tokio::join!(
        process_input(state, &plan.input, req.clone()),
        tokio::time::sleep_until(started + plan.latency)
    );
    Progress::end(progress);
    let anonymous = state.scenario.anonymous_batch_errors;
    let failed = |message: String, input_object| TaskError {
        error: if anonymous {
            message
        } else {
            format!("{}: {message}", plan.input)
        },
        created_at: now_rfc3339(),
        input_object: if anonymous { None } else { input_object },
        plain: false,
    };
    let rendered = rendered.map_err(|err| failed(err.message(), None))?;
    if plan.forced_error {
        return Err(failed(
            "Image processing failed (injected by the emulator scenario).".to_owned(),
            Some(rendered.input),
        ));
    }
    let ext = rendered.output.ext.clone();
    let name = if plan.renamed {
        format!("unmatched-{}.{ext}", random_hex(6))
    } else {
        batch_output_name(&plan.input, &ext)
    };
    let input_object = rendered.input.clone();
    let destination = req.output.destination.as_deref();
    let (input, output) = deliver(state, host, rendered, destination, OutputName::Batch(name))
        .await
        .map_err(|err| failed(err.message(), Some(input_object)))?;
    Ok(Processed {
        item: BatchResultItem {
            input_object: input,
            output_object: output,
        },
        renamed: plan.renamed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_lists_and_single_urls_are_accepted() {
        let ok = validated(
            &json!({"input": ["http://h/a.png", "storage://demo/b-8x8.png"], "operations": {}}),
        )
        .map(|(_, images)| images)
        .ok();
        assert_eq!(
            ok,
            Some(Images::Urls(vec![
                "http://h/a.png".to_owned(),
                "storage://demo/b-8x8.png".to_owned()
            ]))
        );
        let one = validated(
            &json!({"input": "http://h/a.png", "operations": {}, "output": {"format": "png"}}),
        )
        .map(|(req, images)| (req.output_format(), images))
        .ok();
        assert_eq!(
            one,
            Some((
                OutputFormat::Png,
                Images::Urls(vec!["http://h/a.png".to_owned()])
            ))
        );
    }

    #[test]
    fn folder_inputs_take_both_forms() {
        let folder = |input: Value| {
            validated(&json!({"input": input, "operations": {}}))
                .map(|(_, images)| images)
                .ok()
        };
        assert_eq!(
            folder(json!("storage://s/raw/")),
            Some(Images::Folder {
                uri: "storage://s/raw/".to_owned(),
                recursive: false,
                field: "input"
            })
        );
        assert_eq!(
            folder(json!({"source": "storage://s/raw", "recursive": true})),
            Some(Images::Folder {
                uri: "storage://s/raw/".to_owned(),
                recursive: true,
                field: "input.source"
            })
        );
    }

    #[test]
    fn empty_lists_and_bad_urls_are_refused() {
        for body in [
            json!({"input": [], "operations": {}}),
            json!({"input": ["http://h/a.png", "ftp://h/b.png"], "operations": {}}),
            json!({"input": [1, 2], "operations": {}}),
            json!({"operations": {}}),
            json!({"input": ["http://h/a.png"], "operations": {}, "output": {"format": "avif"}}),
            json!({"input": ["http://h/a.png"], "operations": {"resizing": {"width": -1}}}),
        ] {
            assert!(validated(&body).is_err(), "{body} must be refused");
        }
    }
}
