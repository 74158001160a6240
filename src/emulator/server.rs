//! The emulator's HTTP side: the accept loop (hyper, so a submit's connection can be closed
//! without any response), the axum router for both prefixes, the API gate (auth, limits,
//! runtime toggles, injected 5xx), the endpoint handlers (batches: `emulator::batch`; storage
//! connectors: `emulator::storage`), the delivery of results (a `tmp_url`, or an object written
//! to a storage destination) and the hand-off of finished tasks to the webhook sender.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Multipart, Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::imaging::{self, ImagingError, Rendered};
use super::inputs::{self, HttpClient};
use super::limits::{RateLimiter, Verdict};
use super::scenario::{Scenario, WebhookBody};
use super::stats::{Control, ControlState, Recorder, submit_key};
use crate::claid::request::{self, EditRequest, FieldError, InputRule, OutputFormat};
use crate::claid::wire::{
    AsyncTask, EditResponse, Envelope, ErrorBody, ImageObject, NestedErrorBody, TaskError,
    TaskResult, TaskStatus, batch_output_name,
};
use crate::emulator::batch::{self, Batch};
use crate::emulator::storage::{self, Backing, Registry};
use crate::emulator::webhook::{Delivery, Outbox, Plan};

/// Largest request body (uploads included).
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Shared state of one emulator instance.
pub struct AppState {
    pub(crate) scenario: Scenario,
    /// Runtime toggles (also owned by the `Handle`).
    pub(crate) control: Control,
    /// Counters (also read by the `Handle`).
    pub(crate) recorder: Arc<Recorder>,
    /// The one RNG behind scenario decisions, so a seed reproduces a run.
    rng: Mutex<StdRng>,
    limiter: Mutex<RateLimiter>,
    tasks: Mutex<HashMap<u64, Task>>,
    pub(crate) batches: Mutex<HashMap<u64, Batch>>,
    /// Ids of async tasks and batches (one sequence, so an id names one or the other).
    pub(crate) next_id: AtomicU64,
    /// tmp_url token → stored result.
    results: Mutex<HashMap<String, Stored>>,
    http: HttpClient,
    /// Fallback for `Host` when a request has none.
    pub(crate) local_addr: SocketAddr,
    /// Storage connectors.
    pub(crate) storages: Registry,
    /// The webhook queue; `None` when the scenario sends no webhooks.
    outbox: Option<Outbox>,
    /// Announcements made so far (for `webhook_drop_nth`).
    announced: AtomicU64,
    /// Submits (async or batch) answered or dropped so far (for `drop_first`).
    submits_seen: AtomicU64,
    /// Cancelled when the server stops, which ends webhook deliveries still pending.
    shutdown: CancellationToken,
    /// What `unsettled_share` has decided already (`poll:ID`, `done:ID`, `get:TOKEN`).
    unsettled: Mutex<std::collections::HashSet<String>>,
    /// Polls answered 429 so far, by task (`scenario.polls_rate_limited`).
    rate_limited_polls: Mutex<std::collections::HashMap<String, u32>>,
}

/// One async task.
struct Task {
    created_at: String,
    request: Value,
    result_url: String,
    /// Before this instant the task shows ACCEPTED, after it PROCESSING (until an outcome).
    processing_at: Instant,
    /// Set only once the latency elapsed AND the bytes exist (or the task failed).
    outcome: Option<Outcome>,
}

enum Outcome {
    Done {
        input: Box<ImageObject>,
        output: Box<ImageObject>,
    },
    Error {
        message: String,
        at: String,
    },
}

/// A rendered result behind a tmp_url; `bytes` is dropped on expiry so the token answers 410.
struct Stored {
    bytes: Option<Bytes>,
    mime: String,
    /// When it was made, by the clock `Control::expire_results` reads.
    made: std::time::Instant,
    expires_at: Instant,
}

/// Closes the request's connection without a response when notified.
#[derive(Clone)]
pub(crate) struct DropConnection(Arc<Notify>);

impl DropConnection {
    /// Closes the connection; the handler then never answers.
    pub(crate) async fn drop_response(&self) -> Response {
        self.0.notify_one();
        std::future::pending::<Response>().await
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

pub(crate) fn random_hex(n_bytes: usize) -> String {
    let mut rng = rand::rng();
    (0..n_bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

fn request_id() -> String {
    let h = random_hex(16);
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

impl AppState {
    /// The state of a new emulator; starts the webhook sender when the scenario has a URL, so
    /// it must be called inside a tokio runtime. Fails when a storage connector of the scenario
    /// cannot be set up.
    pub fn new(scenario: Scenario, local_addr: SocketAddr) -> std::io::Result<Arc<AppState>> {
        let storages = Registry::new(
            &scenario.storages,
            scenario.storage_endpoint.clone(),
            scenario.storage_region.clone(),
            scenario.storage_root.is_some(),
        )
        .map_err(|message| std::io::Error::new(std::io::ErrorKind::InvalidInput, message))?;
        let rng = match scenario.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let recorder = Arc::new(Recorder::default());
        let shutdown = CancellationToken::new();
        let outbox = Outbox::start(&scenario, Arc::clone(&recorder), shutdown.clone());
        Ok(Arc::new(AppState {
            control: Control::new(scenario.credits_exhausted, scenario.forbidden),
            recorder,
            rng: Mutex::new(rng),
            limiter: Mutex::new(RateLimiter::new(
                scenario.rpm,
                scenario.rps,
                scenario.rate_window,
                Instant::now(),
            )),
            tasks: Mutex::new(HashMap::new()),
            batches: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(scenario.first_task_id.max(1)),
            results: Mutex::new(HashMap::new()),
            http: inputs::http_client(),
            local_addr,
            storages,
            outbox,
            announced: AtomicU64::new(0),
            submits_seen: AtomicU64::new(0),
            shutdown,
            unsettled: Mutex::new(std::collections::HashSet::new()),
            rate_limited_polls: Mutex::new(std::collections::HashMap::new()),
            scenario,
        }))
    }

    /// A task's request as its answers, polls and webhooks echo it (`echo_defaults`).
    pub(crate) fn echoed(&self, request: &Value) -> Value {
        if self.scenario.echo_defaults {
            request::with_defaults(request)
        } else {
            request.clone()
        }
    }

    /// True with probability `share`.
    pub(crate) fn roll(&self, share: f64) -> bool {
        share > 0.0 && lock(&self.rng).random::<f64>() < share
    }

    /// Whether this submit's answer is dropped after its task is made: one of the scenario's
    /// first `drop_first` submits, or by `drop_share`.
    pub(crate) fn drops_answer(&self) -> bool {
        let nth = self.submits_seen.fetch_add(1, Ordering::SeqCst);
        nth < u64::from(self.scenario.drop_first) || self.roll(self.scenario.drop_share)
    }

    /// With `unsettled_share`: whether the first answer of its kind about `key` is unsettled
    /// (counted); every later one is settled.
    pub(crate) fn unsettled_once(&self, key: String) -> bool {
        if self.scenario.unsettled_share <= 0.0 || !lock(&self.unsettled).insert(key) {
            return false;
        }
        let unsettled = self.roll(self.scenario.unsettled_share);
        if unsettled {
            self.recorder.update(|s| s.unsettled_answers += 1);
        }
        unsettled
    }

    /// A 429 for this submit while the first `scenario.submits_rate_limited` are not answered
    /// yet.
    pub(crate) fn submit_rate_limited(&self) -> Option<Response> {
        self.rate_limited_while("submits".to_owned(), self.scenario.submits_rate_limited)
    }

    /// A 429 for this poll of `key` while its first `scenario.polls_rate_limited` are not
    /// answered yet.
    pub(crate) fn poll_rate_limited(&self, key: String) -> Option<Response> {
        self.rate_limited_while(key, self.scenario.polls_rate_limited)
    }

    /// A 429 (`RateLimit-Reset: 0`) for a request counted under `key`, while its first `n`
    /// are not answered yet.
    fn rate_limited_while(&self, key: String, n: u32) -> Option<Response> {
        if n == 0 {
            return None;
        }
        let mut seen = lock(&self.rate_limited_polls);
        let count = seen.entry(key).or_insert(0);
        if *count >= n {
            return None;
        }
        *count += 1;
        drop(seen);
        self.recorder.update(|s| s.rate_limited += 1);
        let mut response = api_error(
            StatusCode::TOO_MANY_REQUESTS,
            "2001",
            "general",
            "Too Many Requests. Rate limit exceeded.",
        );
        response
            .headers_mut()
            .insert("ratelimit-reset", axum::http::HeaderValue::from_static("0"));
        Some(response)
    }

    /// Whether this poll of `key` answers 404 (its first `scenario.polls_not_found`).
    pub(crate) fn poll_not_found(&self, key: String) -> bool {
        let n = self.scenario.polls_not_found;
        if n == 0 {
            return false;
        }
        let mut seen = lock(&self.rate_limited_polls);
        let count = seen.entry(format!("missing:{key}")).or_insert(0);
        *count += 1;
        *count <= n
    }

    /// A 409 for this poll of `key` while its first `scenario.polls_refused` are not spent.
    pub(crate) fn poll_refused(&self, key: String) -> Option<Response> {
        let n = self.scenario.polls_refused;
        if n == 0 {
            return None;
        }
        let mut seen = lock(&self.rate_limited_polls);
        let count = seen.entry(format!("refused:{key}")).or_insert(0);
        if *count >= n {
            return None;
        }
        *count += 1;
        drop(seen);
        Some(api_error(
            StatusCode::CONFLICT,
            "4090",
            "general",
            "Conflict with the current state of the resource.",
        ))
    }

    pub(crate) fn sample_latency(&self) -> Duration {
        self.scenario.latency.sample(&mut *lock(&self.rng))
    }

    /// Shuffles `items` with the scenario's RNG.
    pub(crate) fn shuffle<T>(&self, items: &mut [T]) {
        use rand::seq::SliceRandom;
        items.shuffle(&mut *lock(&self.rng));
    }

    /// Hands the result object of a task or batch that reached DONE/ERROR (or of a task just
    /// accepted, with `webhook_on_accept`: the `data` of its poll answer) to the webhook
    /// sender, with the faults rolled for it.
    pub(crate) fn announce(&self, view: Value) {
        let Some(outbox) = &self.outbox else {
            return;
        };
        let s = &self.scenario;
        let nth = self
            .announced
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let plan = Plan {
            drop: s.webhook_drop_nth == Some(nth)
                || s.webhook_drop_from.is_some_and(|from| nth >= from)
                || self.roll(s.webhook_drop_share),
            forge: self.roll(s.webhook_forged_share),
            delay: self.roll(s.webhook_delay_share),
            reorder: self.roll(s.webhook_reorder_share),
            duplicate: self.roll(s.webhook_duplicate_share),
        };
        let forged_body = plan.forge.then(|| self.webhook_body(forged(view.clone())));
        outbox.send(Delivery {
            body: self.webhook_body(view),
            forged_body,
            plan,
        });
    }

    fn webhook_body(&self, view: Value) -> Bytes {
        let value = match self.scenario.webhook_body {
            WebhookBody::Bare => view,
            WebhookBody::Wrapped => serde_json::json!({ "data": view }),
        };
        Bytes::from(value.to_string())
    }

    fn is_corrupt(&self, name: &str) -> bool {
        self.scenario
            .corrupt_patterns
            .iter()
            .any(|p| !p.is_empty() && name.contains(p.as_str()))
    }

    /// Stores result bytes and returns the tmp_url; `name`, when given, is its last path
    /// segment (the output file name of a batch result).
    pub(crate) fn store_result(
        &self,
        host: &str,
        bytes: Vec<u8>,
        mime: &str,
        name: Option<&str>,
    ) -> String {
        let token = random_hex(16);
        let now = Instant::now();
        let mut results = lock(&self.results);
        // Forget the bytes of expired results; keep the token so it answers 410.
        for stored in results.values_mut() {
            if stored.expires_at <= now {
                stored.bytes = None;
            }
        }
        results.insert(
            token.clone(),
            Stored {
                bytes: Some(Bytes::from(bytes)),
                mime: mime.to_owned(),
                made: std::time::Instant::now(),
                expires_at: now + self.scenario.tmp_url_ttl,
            },
        );
        match name {
            Some(name) => format!("http://{host}/_emulator/results/{token}/{name}"),
            None => format!("http://{host}/_emulator/results/{token}"),
        }
    }
}

/// The forged variant of a result object: the same id, status ERROR, no results. A receiver
/// that acted on it without checking the signature would fail the task's jobs.
fn forged(mut view: Value) -> Value {
    if let Some(map) = view.as_object_mut() {
        map.insert("status".to_owned(), Value::from("ERROR"));
        map.insert(
            "errors".to_owned(),
            serde_json::json!([{
                "error": "Forged webhook (the emulator's webhook_forged_share fault): its signature is wrong and it must be rejected.",
                "created_at": now_rfc3339(),
            }]),
        );
        if map.contains_key("results") {
            map.insert("results".to_owned(), Value::Array(Vec::new()));
        } else {
            map.insert("result".to_owned(), Value::Object(serde_json::Map::new()));
        }
    }
    view
}

/// Serves `state` on `listener` until `shutdown` completes; then closes every connection.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stopped = state.shutdown.clone();
    let app = router(state);
    let connections = CancellationToken::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %err, "emulator accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let closed = connections.child_token();
        tokio::spawn(async move {
            let kill = Arc::new(Notify::new());
            let kill_for_requests = Arc::clone(&kill);
            let service =
                hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(DropConnection(Arc::clone(&kill_for_requests)));
                    app.clone().oneshot(req.map(Body::new))
                });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            // Dropping `conn` closes the socket: that is how a response is "dropped".
            tokio::select! {
                _ = conn => {}
                () = kill.notified() => {}
                () = closed.cancelled() => {}
            }
        });
    }
    connections.cancel();
    stopped.cancel();
    Ok(())
}

/// Which API prefix a request came through (result URLs repeat it).
#[derive(Clone, Copy)]
pub(crate) struct Prefix(pub(crate) &'static str);

fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/image/edit/async", post(submit))
        .route("/image/edit/async/{id}", get(poll))
        .route("/image/edit", post(sync_edit))
        .route("/image/edit/upload", post(upload))
        .route("/image/edit/batch", post(batch::submit))
        .route("/image/edit/batch/{id}", get(batch::poll))
        .route("/storage/storage-types", get(storage::storage_types))
        .route(
            "/storage/storages",
            get(storage::list).post(storage::create),
        )
        .route(
            "/storage/storages/{id}",
            get(storage::get_one)
                .patch(storage::update)
                .delete(storage::delete),
        )
        .fallback(api_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(Arc::clone(&state), api_gate));
    Router::new()
        .nest("/v1", api.clone().layer(Extension(Prefix("/v1"))))
        .nest("/v1-beta1", api.layer(Extension(Prefix("/v1-beta1"))))
        .route("/_emulator/results/{token}", get(download))
        .route("/_emulator/results/{token}/{name}", get(download_named))
        .route("/_emulator/moved/{*path}", get(moved))
        .route("/_emulator/stats", get(stats))
        .route("/_emulator/control", post(set_control).get(get_control))
        .route("/_static/{*path}", get(static_file))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(Arc::clone(&state), outer))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

// ---------------------------------------------------------------------------------------------
// Error envelope

pub(crate) fn api_error(
    status: StatusCode,
    code: &str,
    kind: &str,
    message: impl Into<String>,
) -> Response {
    api_error_details(status, code, kind, message, BTreeMap::new())
}

fn api_error_details(
    status: StatusCode,
    code: &str,
    kind: &str,
    message: impl Into<String>,
    details: BTreeMap<String, Vec<String>>,
) -> Response {
    let body = ErrorBody {
        error_code: code.to_owned(),
        error_type: kind.to_owned(),
        error_message: message.into(),
        error_details: details,
    };
    if status == StatusCode::TOO_MANY_REQUESTS {
        (status, Json(NestedErrorBody { detail: body })).into_response()
    } else {
        (status, Json(body)).into_response()
    }
}

pub(crate) fn validation_error(errors: &[FieldError]) -> Response {
    let mut details: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in errors {
        details
            .entry(e.path.clone())
            .or_default()
            .push(e.message.clone());
    }
    let message = errors
        .iter()
        .map(|e| format!("{}: {}.", e.path, e.message))
        .collect::<Vec<_>>()
        .join(" ");
    api_error_details(
        StatusCode::UNPROCESSABLE_ENTITY,
        "9000",
        "validation",
        message,
        details,
    )
}

pub(crate) fn field_error(path: &str, message: &str) -> Response {
    validation_error(&[FieldError {
        path: path.to_owned(),
        message: message.to_owned(),
    }])
}

fn bad_request(message: impl Into<String>) -> Response {
    api_error(StatusCode::BAD_REQUEST, "1000", "general", message)
}

fn input_error(message: impl Into<String>) -> Response {
    api_error(StatusCode::BAD_REQUEST, "1001", "image", message)
}

/// A request body over [`MAX_BODY_BYTES`]: 413 (code 1413).
fn too_large() -> Response {
    api_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "1413",
        "general",
        "Request body too large.",
    )
}

fn internal_error() -> Response {
    api_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "1500",
        "general",
        "Internal server error (injected by the emulator scenario).",
    )
}

// ---------------------------------------------------------------------------------------------
// Middleware

/// Every response: `x-request-id`; counts 429s and 5xx exactly.
async fn outer(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let status = response.status();
    if status == StatusCode::TOO_MANY_REQUESTS {
        state.recorder.update(|s| s.rate_limited += 1);
    } else if status == StatusCode::PAYMENT_REQUIRED {
        state.recorder.update(|s| s.refused_402 += 1);
    } else if status == StatusCode::FORBIDDEN {
        state.recorder.update(|s| s.refused_403 += 1);
    } else if status.is_server_error() {
        state.recorder.update(|s| s.errors_5xx += 1);
    }
    if let Ok(value) = HeaderValue::from_str(&request_id()) {
        response.headers_mut().insert(X_REQUEST_ID, value);
    }
    response
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Submit,
    Poll,
    BatchSubmit,
    BatchPoll,
    Sync,
    Upload,
    Other,
}

impl Endpoint {
    /// The endpoint's name in [`super::stats::RefusedCall`].
    fn label(self) -> &'static str {
        match self {
            Endpoint::Submit => "submit",
            Endpoint::Poll => "poll",
            Endpoint::BatchSubmit => "batch-submit",
            Endpoint::BatchPoll => "batch-poll",
            Endpoint::Sync => "sync",
            Endpoint::Upload => "upload",
            Endpoint::Other => "other",
        }
    }
}

fn endpoint(method: &Method, path: &str) -> Endpoint {
    match (method, path.trim_end_matches('/')) {
        (&Method::POST, "/image/edit/async") => Endpoint::Submit,
        (&Method::GET, p) if p.starts_with("/image/edit/async/") => Endpoint::Poll,
        (&Method::POST, "/image/edit/batch") => Endpoint::BatchSubmit,
        (&Method::GET, p) if p.starts_with("/image/edit/batch/") => Endpoint::BatchPoll,
        (&Method::POST, "/image/edit") => Endpoint::Sync,
        (&Method::POST, "/image/edit/upload") => Endpoint::Upload,
        _ => Endpoint::Other,
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.split_once(' ')?;
    let key = key.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then_some(key)
}

fn add_rate_headers(response: &mut Response, verdict: &Verdict) {
    let headers = response.headers_mut();
    for (name, value) in [
        ("ratelimit-limit", verdict.limit.clone()),
        ("ratelimit-remaining", verdict.remaining.to_string()),
        ("ratelimit-reset", verdict.reset.to_string()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
}

/// API requests only: down → 503, auth → 401, limits → 429, toggles → 403/402, injected 5xx.
async fn api_gate(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let _in_flight = state.recorder.enter();
    if state.control.down() {
        return api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "1503",
            "general",
            "Service temporarily unavailable (emulator is down).",
        );
    }
    let authorized = match (bearer(req.headers()), &state.scenario.api_key) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(given), Some(expected)) => given == expected,
    };
    if !authorized {
        return api_error(
            StatusCode::UNAUTHORIZED,
            "111",
            "auth",
            "Authorization is required.",
        );
    }
    let verdict = lock(&state.limiter).check(Instant::now());
    if let Some(v) = verdict.as_ref().filter(|v| !v.allowed) {
        let mut response = api_error(
            StatusCode::TOO_MANY_REQUESTS,
            "2001",
            "general",
            "Too Many Requests. Rate limit exceeded.",
        );
        add_rate_headers(&mut response, v);
        return response;
    }
    let kind = endpoint(req.method(), req.uri().path());
    // Read once: a toggle flipped meanwhile must not make a call counted and not refused.
    let forbidden = state.control.forbidden();
    let no_credits = state.control.credits_exhausted()
        && matches!(
            kind,
            Endpoint::Submit | Endpoint::BatchSubmit | Endpoint::Sync | Endpoint::Upload
        );
    if forbidden || no_credits {
        state.recorder.update(|s| {
            if s.refused_calls.len() < super::stats::REFUSED_CALLS_KEPT {
                s.refused_calls.push(super::stats::RefusedCall {
                    at_ms: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                    endpoint: kind.label().to_owned(),
                });
            }
        });
    }
    let mut response = if forbidden {
        api_error(
            StatusCode::FORBIDDEN,
            "1403",
            "auth",
            "The API key lacks the image_editing permission scope.",
        )
    } else if no_credits {
        api_error(
            StatusCode::PAYMENT_REQUIRED,
            "1402",
            "billing",
            "No API calls left: credits are exhausted.",
        )
    } else {
        let share = match kind {
            Endpoint::Submit | Endpoint::BatchSubmit => state.scenario.fault_5xx.submit,
            Endpoint::Poll | Endpoint::BatchPoll => state.scenario.fault_5xx.poll,
            Endpoint::Sync => state.scenario.fault_5xx.sync,
            Endpoint::Upload => state.scenario.fault_5xx.upload,
            Endpoint::Other => 0.0,
        };
        let polls_down = matches!(kind, Endpoint::Poll | Endpoint::BatchPoll)
            && state.control.polls_down_for().is_some_and(|id| {
                let last = req.uri().path().rsplit('/').next();
                last.and_then(|last| last.parse::<u64>().ok()) == Some(id)
            });
        if polls_down {
            // A failing server that takes its time, as one behind a proxy does.
            tokio::time::sleep(Duration::from_millis(200)).await;
            internal_error()
        } else if state.roll(share) {
            internal_error()
        } else {
            next.run(req).await
        }
    };
    if let Some(v) = verdict.as_ref() {
        add_rate_headers(&mut response, v);
    }
    response
}

// ---------------------------------------------------------------------------------------------
// Helpers for handlers

/// `--result-url moved`: the `result_url` given answers `301` to the API's own address.
async fn moved(axum::extract::Path(path): axum::extract::Path<String>) -> Response {
    (
        StatusCode::MOVED_PERMANENTLY,
        [(axum::http::header::LOCATION, format!("/{path}"))],
    )
        .into_response()
}

pub(crate) fn host_of(headers: &HeaderMap, fallback: SocketAddr) -> String {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
        })
        .map_or_else(|| fallback.to_string(), str::to_owned)
}

/// The JSON body of an edit request, or the 400/413 answer.
pub(crate) fn json_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Value, Box<Response>> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        let shown = if content_type.is_empty() {
            "none"
        } else {
            content_type
        };
        return Err(Box::new(bad_request(format!(
            "Content-Type must be application/json (got {shown})."
        ))));
    }
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            bad_request(format!("Cannot read request body: {e}."))
        }
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| Box::new(bad_request(format!("Malformed JSON body: {e}."))))
}

/// The body of a JSON edit request (sync or async): the raw value, the validated request
/// and its input, or the 400/413/422 answer.
fn json_edit(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Value, EditRequest, String), Box<Response>> {
    let value = json_body(headers, body)?;
    let (req, input) = validated(&value, InputRule::Required)?;
    Ok((value, req, input.unwrap_or_default()))
}

/// Validates and returns the request plus its input string.
fn validated(
    body: &Value,
    rule: InputRule,
) -> Result<(EditRequest, Option<String>), Box<Response>> {
    let req = request::validate(body, rule).map_err(|errors| validation_error(&errors))?;
    let input = req.input.clone();
    if rule == InputRule::Required && input.as_deref().is_none_or(str::is_empty) {
        return Err(Box::new(field_error("input", "field required")));
    }
    if req.output_format() == OutputFormat::Avif {
        return Err(Box::new(field_error(
            "output.format",
            "avif output is not supported by the emulator (use jpeg, png, webp or tiff)",
        )));
    }
    Ok((req, input))
}

async fn render_blocking(bytes: Vec<u8>, req: EditRequest) -> Result<Rendered, ProcessError> {
    match tokio::task::spawn_blocking(move || imaging::render(&bytes, &req)).await {
        Ok(Ok(rendered)) => Ok(rendered),
        Ok(Err(err @ (ImagingError::Decode(_) | ImagingError::Encode(_)))) => {
            Err(ProcessError::Image(err.to_string()))
        }
        Ok(Err(err)) => Err(ProcessError::Rejected(err.to_string())),
        Err(err) => Err(ProcessError::Image(format!("rendering failed: {err}"))),
    }
}

/// Fetches and renders one input (shared by async tasks, batch images and sync edits).
pub(crate) async fn process_input(
    state: &AppState,
    input: &str,
    req: EditRequest,
) -> Result<Rendered, ProcessError> {
    if state.is_corrupt(input) {
        return Err(ProcessError::Image(
            "Input image is corrupt or in an unsupported format.".to_owned(),
        ));
    }
    let bytes = fetch_input(state, input).await?;
    render_blocking(bytes, req).await
}

/// The bytes of `input`: an object of an s3 connector, else what `inputs::fetch` resolves.
async fn fetch_input(state: &AppState, input: &str) -> Result<Vec<u8>, ProcessError> {
    if let Some((name, key)) = storage::split_uri(input) {
        match state.storages.backing(name) {
            Backing::Bucket(bucket) => {
                let max = inputs::MAX_INPUT_BYTES as u64;
                return storage::read(&state.recorder, &bucket, key, max)
                    .await
                    .map_err(|err| ProcessError::Input(err.to_string()));
            }
            Backing::Unsupported(kind) => {
                return Err(ProcessError::Input(format!(
                    "storage {name:?} is a {} storage; the emulator reads only s3 storages",
                    kind.as_str()
                )));
            }
            Backing::Demo | Backing::Root | Backing::Unknown => {}
        }
    }
    inputs::fetch(&state.http, state.scenario.storage_root.as_deref(), input)
        .await
        .map_err(|e| ProcessError::Input(e.to_string()))
}

/// The 422 answer when a `storage://` input or destination of an edit names no usable
/// connector, or a path that could leave the connector's prefix.
pub(crate) fn check_storage_refs(state: &AppState, req: &EditRequest) -> Result<(), Box<Response>> {
    let mut errors = Vec::new();
    if let Some(input) = &req.input {
        errors.extend(state.storages.check_input("input", input));
    }
    if let Some(destination) = &req.output.destination {
        errors.extend(state.storages.check_destination(destination));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Box::new(validation_error(&errors)))
    }
}

pub(crate) enum ProcessError {
    /// The input could not be fetched.
    Input(String),
    /// The output could not be written to its storage destination.
    Output(String),
    /// The input could not be decoded or rendered.
    Image(String),
    /// The request cannot be honoured for this image (too large, unsupported format).
    Rejected(String),
}

impl ProcessError {
    pub(crate) fn message(self) -> String {
        match self {
            ProcessError::Input(m)
            | ProcessError::Output(m)
            | ProcessError::Image(m)
            | ProcessError::Rejected(m) => m,
        }
    }
    fn response(self) -> Response {
        match self {
            ProcessError::Input(m) => input_error(m),
            ProcessError::Output(m) => api_error(StatusCode::BAD_REQUEST, "1003", "storage", m),
            ProcessError::Image(m) => api_error(StatusCode::BAD_REQUEST, "1002", "image", m),
            ProcessError::Rejected(m) => {
                api_error(StatusCode::UNPROCESSABLE_ENTITY, "9000", "validation", m)
            }
        }
    }
}

/// How the output of one image is named.
pub(crate) enum OutputName<'a> {
    /// An edit's: a destination key is used as given; a destination folder gets the file name
    /// of this input URL or upload file name (basename, extension of the output format).
    Edit(&'a str),
    /// A batch image's: this file name, inside the destination folder, and as the last path
    /// segment of its `tmp_url`.
    Batch(String),
}

/// Puts a rendered image where the request asked: behind a `tmp_url`, or (a `storage://`
/// destination) into the connector's bucket, written whole in one request before the answer,
/// the output object then carrying `object_key`, `object_bucket`, `object_uri` and
/// `claid_storage_uri` instead of a `tmp_url`.
pub(crate) async fn deliver(
    state: &AppState,
    host: &str,
    rendered: Rendered,
    destination: Option<&str>,
    name: OutputName<'_>,
) -> Result<(ImageObject, ImageObject), ProcessError> {
    let Rendered {
        bytes,
        input,
        mut output,
    } = rendered;
    let Some(uri) = destination.filter(|uri| uri.starts_with("storage://")) else {
        let tmp_name = match &name {
            OutputName::Edit(_) => None,
            OutputName::Batch(file_name) => Some(file_name.as_str()),
        };
        output.tmp_url = Some(state.store_result(host, bytes, &output.mime, tmp_name));
        return Ok((input, output));
    };
    let Some(destination) = state.storages.destination(uri) else {
        return Err(ProcessError::Output(format!(
            "the destination {uri:?} names no connected s3 storage (was it disconnected?)"
        )));
    };
    let (file_name, as_folder) = match name {
        OutputName::Edit(source) => (batch_output_name(source, &output.ext), false),
        OutputName::Batch(file_name) => (file_name, true),
    };
    let key = destination.key(&file_name, as_folder);
    let bucket = &destination.storage;
    let bucket_key = bucket
        .bucket_key(&key)
        .map_err(|err| ProcessError::Output(err.to_string()))?;
    let mut bytes = bytes;
    if state.scenario.short_objects {
        bytes.truncate(bytes.len() / 2);
    }
    storage::write(&state.recorder, bucket, &key, bytes)
        .await
        .map_err(|err| ProcessError::Output(err.to_string()))?;
    output.tmp_url = None;
    output.object_uri = Some(bucket.uri(&key));
    output.object_bucket = Some(bucket.bucket().to_owned());
    output.object_key = Some(bucket_key);
    output.claid_storage_uri = Some(destination.claid_uri(&key));
    Ok((input, output))
}

/// For the scenario's `garbled_share` of submits (the task already runs): a 200 whose body
/// is no task (a proxy's page), counted.
pub(crate) fn garbled_answer(state: &AppState) -> Option<Response> {
    if !state.roll(state.scenario.garbled_share) {
        return None;
    }
    state.recorder.update(|s| s.garbled_responses += 1);
    Some(
        (
            axum::http::StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, "text/html")],
            "<html><body>Service temporarily rerouted</body></html>",
        )
            .into_response(),
    )
}

/// Holds a submit's answer for the scenario's `submit_response_delay` (the task already runs).
pub(crate) async fn delay_submit_response(state: &AppState) {
    let delay = state.scenario.submit_response_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

// ---------------------------------------------------------------------------------------------
// API handlers

async fn submit(
    State(state): State<Arc<AppState>>,
    Extension(Prefix(prefix)): Extension<Prefix>,
    drop_conn: Option<Extension<DropConnection>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (value, req, input) = match json_edit(&headers, body) {
        Ok(ok) => ok,
        Err(response) => return *response,
    };
    if let Err(response) = check_storage_refs(&state, &req) {
        return *response;
    }
    if let Some(response) = state.submit_rate_limited() {
        return response;
    }
    let host = host_of(&headers, state.local_addr);
    let id = state.next_id.fetch_add(1, Ordering::SeqCst);
    let result_url = state.scenario.result_url.url(&host, prefix, "async", id);
    let latency = state.sample_latency();
    let forced_error = state.roll(state.scenario.error_share);
    let dropped = state.drops_answer();
    let started = Instant::now();
    let created_at = now_rfc3339();
    lock(&state.tasks).insert(
        id,
        Task {
            created_at: created_at.clone(),
            request: state.echoed(&value),
            result_url: result_url.clone(),
            processing_at: started + latency / 4,
            outcome: None,
        },
    );
    state.recorder.submitted(submit_key(&value));
    if state.scenario.webhook_on_accept {
        let view = lock(&state.tasks).get(&id).map(|task| async_view(id, task));
        if let Some(Ok(value)) = view.map(|view| serde_json::to_value(&view)) {
            state.announce(value);
        }
    }
    tokio::spawn(run_task(
        Arc::clone(&state),
        id,
        req,
        input,
        started + latency,
        forced_error,
        host,
    ));

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
    let accepted = AsyncTask {
        id,
        status: TaskStatus::Accepted,
        result_url,
        created_at,
        request: state.echoed(&value),
        errors: Vec::new(),
        result: TaskResult::default(),
    };
    Json(Envelope { data: accepted }).into_response()
}

/// Processes one async task; the outcome appears only after `deadline` and once bytes exist.
async fn run_task(
    state: Arc<AppState>,
    id: u64,
    req: EditRequest,
    input: String,
    deadline: Instant,
    forced_error: bool,
    host: String,
) {
    let destination = req.output.destination.clone();
    let work = async {
        if forced_error {
            return Err("Image processing failed (injected by the emulator scenario).".to_owned());
        }
        let rendered = process_input(&state, &input, req)
            .await
            .map_err(ProcessError::message)?;
        let name = OutputName::Edit(&input);
        deliver(&state, &host, rendered, destination.as_deref(), name)
            .await
            .map_err(ProcessError::message)
    };
    let (result, ()) = tokio::join!(work, tokio::time::sleep_until(deadline));
    let outcome = match result {
        Ok((input, output)) => Outcome::Done {
            input: Box::new(input),
            output: Box::new(output),
        },
        Err(message) => {
            state.recorder.update(|s| s.tasks_errored += 1);
            Outcome::Error {
                message,
                at: now_rfc3339(),
            }
        }
    };
    let view = {
        let mut tasks = lock(&state.tasks);
        tasks.get_mut(&id).map(|task| {
            task.outcome = Some(outcome);
            async_view(id, task)
        })
    };
    if let Some(view) = view {
        match serde_json::to_value(&view) {
            Ok(value) => state.announce(value),
            Err(err) => tracing::warn!(error = %err, "Cannot serialize a task for its webhook"),
        }
    }
}

/// The `data` of a poll answer for task `id`.
fn async_view(id: u64, task: &Task) -> AsyncTask {
    let (status, errors, result) = match &task.outcome {
        Some(Outcome::Done { input, output }) => (
            TaskStatus::Done,
            Vec::new(),
            TaskResult {
                input_object: Some(ImageObject::clone(input)),
                output_object: Some(ImageObject::clone(output)),
            },
        ),
        Some(Outcome::Error { message, at }) => (
            TaskStatus::Error,
            vec![TaskError {
                error: message.clone(),
                created_at: at.clone(),
                input_object: None,
                plain: false,
            }],
            TaskResult::default(),
        ),
        None if Instant::now() >= task.processing_at => {
            (TaskStatus::Processing, Vec::new(), TaskResult::default())
        }
        None => (TaskStatus::Accepted, Vec::new(), TaskResult::default()),
    };
    AsyncTask {
        id,
        status,
        result_url: task.result_url.clone(),
        created_at: task.created_at.clone(),
        request: task.request.clone(),
        errors,
        result,
    }
}

/// Holds a share of polls (async and batch) for the scenario's `poll_delay`.
pub(crate) async fn maybe_delay_poll(state: &AppState) {
    if state.roll(state.scenario.poll_delay_share) {
        state.recorder.update(|s| s.polls_delayed += 1);
        tokio::time::sleep(state.scenario.poll_delay).await;
    }
}

/// The integer id of a poll's path, or the 422 answer.
pub(crate) fn task_id(id: Result<Path<String>, PathRejection>) -> Result<u64, Box<Response>> {
    let raw = match id {
        Ok(Path(raw)) => raw,
        Err(e) => {
            return Err(Box::new(field_error(
                "task_id",
                &format!("invalid path parameter: {e}"),
            )));
        }
    };
    raw.parse::<u64>()
        .map_err(|_| Box::new(field_error("task_id", "value is not a valid integer")))
}

/// The 404 of an unknown async task or batch id (Claid's text for both).
pub(crate) fn pipeline_not_found() -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        "1404",
        "general",
        "Batch image edit pipeline not found.",
    )
}

async fn poll(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    state.recorder.update(|s| s.polls += 1);
    maybe_delay_poll(&state).await;
    let id = match task_id(id) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    let tasks = lock(&state.tasks);
    let Some(task) = tasks.get(&id) else {
        drop(tasks);
        return pipeline_not_found();
    };
    let mut view = async_view(id, task);
    drop(tasks);
    if let Some(response) = state.poll_rate_limited(format!("poll:{id}")) {
        return response;
    }
    if let Some(response) = state.poll_refused(format!("poll:{id}")) {
        return response;
    }
    if state.poll_not_found(format!("poll:{id}")) {
        return pipeline_not_found();
    }
    if state.unsettled_once(format!("poll:{id}")) {
        return pipeline_not_found();
    }
    if view.status == TaskStatus::Done && state.unsettled_once(format!("done:{id}")) {
        view.result.output_object = None;
    }
    state
        .recorder
        .update(|s| *s.polls_by_task.entry(id).or_insert(0) += 1);
    Json(Envelope { data: view }).into_response()
}

async fn sync_edit(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (_, req, input) = match json_edit(&headers, body) {
        Ok(ok) => ok,
        Err(response) => return *response,
    };
    if let Err(response) = check_storage_refs(&state, &req) {
        return *response;
    }
    let destination = req.output.destination.clone();
    let host = host_of(&headers, state.local_addr);
    let work = async {
        let rendered = process_input(&state, &input, req).await?;
        let name = OutputName::Edit(&input);
        deliver(&state, &host, rendered, destination.as_deref(), name).await
    };
    let deadline = Instant::now() + state.sample_latency();
    let (result, ()) = tokio::join!(work, tokio::time::sleep_until(deadline));
    match result {
        Ok((input, output)) => {
            state.recorder.update(|s| s.sync_edits += 1);
            Json(Envelope {
                data: EditResponse { input, output },
            })
            .into_response()
        }
        Err(err) => err.response(),
    }
}

async fn upload(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    let mut multipart = match multipart {
        Ok(m) => m,
        Err(e) => {
            return bad_request(format!(
                "Expected a multipart/form-data body with parts `file` and `data`: {e}."
            ));
        }
    };
    let mut file: Option<(String, Bytes)> = None;
    let mut data: Option<String> = None;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return too_large(),
            Err(e) => return bad_request(format!("Malformed multipart body: {e}.")),
        };
        match field.name().unwrap_or("") {
            "file" => {
                let name = field.file_name().unwrap_or("").to_owned();
                match field.bytes().await {
                    Ok(bytes) => file = Some((name, bytes)),
                    Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return too_large(),
                    Err(e) => return bad_request(format!("Cannot read the `file` part: {e}.")),
                }
            }
            "data" => match field.text().await {
                Ok(text) => data = Some(text),
                Err(e) => return bad_request(format!("Cannot read the `data` part: {e}.")),
            },
            _ => {}
        }
    }
    let mut missing = Vec::new();
    if file.as_ref().is_none_or(|(_, b)| b.is_empty()) {
        missing.push(FieldError {
            path: "file".to_owned(),
            message: "field required".to_owned(),
        });
    }
    if data.is_none() {
        missing.push(FieldError {
            path: "data".to_owned(),
            message: "field required".to_owned(),
        });
    }
    let (Some((file_name, bytes)), Some(data)) = (file, data) else {
        return validation_error(&missing);
    };
    if !missing.is_empty() {
        return validation_error(&missing);
    }
    let value: Value = match serde_json::from_str(&data) {
        Ok(v) => v,
        Err(e) => return bad_request(format!("The `data` part is not valid JSON: {e}.")),
    };
    let (req, _) = match validated(&value, InputRule::Forbidden) {
        Ok(ok) => ok,
        Err(response) => return *response,
    };
    if let Err(response) = check_storage_refs(&state, &req) {
        return *response;
    }
    if state.is_corrupt(&file_name) {
        return api_error(
            StatusCode::BAD_REQUEST,
            "1002",
            "image",
            "Input image is corrupt or in an unsupported format.",
        );
    }
    let destination = req.output.destination.clone();
    let host = host_of(&headers, state.local_addr);
    let work = async {
        let rendered = render_blocking(bytes.to_vec(), req).await?;
        let name = OutputName::Edit(&file_name);
        deliver(&state, &host, rendered, destination.as_deref(), name).await
    };
    let deadline = Instant::now() + state.sample_latency();
    let (result, ()) = tokio::join!(work, tokio::time::sleep_until(deadline));
    match result {
        Ok((input, output)) => {
            state.recorder.update(|s| s.uploads += 1);
            Json(Envelope {
                data: EditResponse { input, output },
            })
            .into_response()
        }
        Err(err) => err.response(),
    }
}

async fn method_not_allowed() -> Response {
    api_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "1405",
        "general",
        "Method not allowed.",
    )
}

async fn api_not_found() -> Response {
    api_error(StatusCode::NOT_FOUND, "1404", "general", "Not found.")
}

// ---------------------------------------------------------------------------------------------
// Emulator-only endpoints

async fn not_found() -> Response {
    api_error(StatusCode::NOT_FOUND, "1404", "general", "Not found.")
}

/// A batch result's tmp_url: the token, then the output file name (not checked).
async fn download_named(
    state: State<Arc<AppState>>,
    Path((token, _name)): Path<(String, String)>,
) -> Response {
    download(state, Path(token)).await
}

async fn download(State(state): State<Arc<AppState>>, Path(token): Path<String>) -> Response {
    if state.control.downloads_down() {
        return api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "1503",
            "general",
            "The result storage is temporarily unavailable (emulator control).",
        );
    }
    if state.control.downloads_rate_limited() {
        let mut answer = api_error(
            StatusCode::TOO_MANY_REQUESTS,
            "1429",
            "general",
            "Too many downloads (emulator control).",
        );
        answer
            .headers_mut()
            .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        return answer;
    }
    if state.roll(state.scenario.fault_5xx.download) {
        return internal_error();
    }
    // The lock must not live across the await below.
    let found = {
        let mut results = lock(&state.results);
        results.get_mut(&token).map(|stored| {
            if stored.expires_at <= Instant::now() || state.control.expired(stored.made) {
                stored.bytes = None;
            }
            (stored.bytes.clone(), stored.mime.clone())
        })
    };
    if found.is_some() && state.unsettled_once(format!("get:{token}")) {
        return api_error(
            StatusCode::NOT_FOUND,
            "1404",
            "general",
            "Result not found.",
        );
    }
    let Some((bytes, mime)) = found else {
        return api_error(
            StatusCode::NOT_FOUND,
            "1404",
            "general",
            "Result not found.",
        );
    };
    let Some(bytes) = bytes else {
        state.recorder.update(|s| s.downloads_expired += 1);
        return api_error(
            StatusCode::GONE,
            "1410",
            "general",
            "Temporary result URL has expired.",
        );
    };
    if state.roll(state.scenario.truncate_share) {
        state.recorder.update(|s| s.downloads_truncated += 1);
        return truncated_response(&mime, bytes);
    }
    if state.roll(state.scenario.short_share) {
        state.recorder.update(|s| s.downloads_short += 1);
        // A stream has no length to announce: chunked, and the last chunk ends it cleanly.
        let half = bytes.slice(..bytes.len() / 2);
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![Ok(half)];
        return (
            [(header::CONTENT_TYPE, mime)],
            Body::from_stream(futures_util::stream::iter(chunks)),
        )
            .into_response();
    }
    if state.roll(state.scenario.wrong_image_share) {
        if let Some(wrong) = wrong_image(&mime, &bytes).await {
            state.recorder.update(|s| s.downloads_wrong_image += 1);
            return ([(header::CONTENT_TYPE, mime)], wrong).into_response();
        }
    }
    state.recorder.update(|s| s.downloads += 1);
    ([(header::CONTENT_TYPE, mime)], bytes).into_response()
}

/// Announces every byte of `bytes` in `Content-Length`, sends the first half, then fails the
/// body so the connection is closed mid-response.
fn truncated_response(mime: &str, bytes: Bytes) -> Response {
    let full = bytes.len();
    let half = bytes.slice(..full / 2);
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(half),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "download truncated (injected by the emulator scenario)",
        )),
    ];
    let mut response = Response::new(Body::from_stream(futures_util::stream::iter(chunks)));
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(mime) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(full));
    response
}

/// A valid image in the result's format, one pixel wider and taller than the result; `None`
/// when the stored bytes are not a readable image.
async fn wrong_image(mime: &str, bytes: &Bytes) -> Option<Bytes> {
    let (w, h) = image::ImageReader::new(std::io::Cursor::new(bytes.as_ref()))
        .with_guessed_format()
        .ok()?
        .into_dimensions()
        .ok()?;
    let ext = match mime {
        "image/jpeg" => "jpg",
        "image/webp" => "webp",
        _ => "png",
    };
    let name = format!(
        "wrong-{}x{}.{ext}",
        w.saturating_add(1),
        h.saturating_add(1)
    );
    tokio::task::spawn_blocking(move || inputs::demo_image(&name).ok())
        .await
        .ok()
        .flatten()
        .map(Bytes::from)
}

async fn stats(State(state): State<Arc<AppState>>) -> Response {
    Json(state.recorder.snapshot()).into_response()
}

async fn get_control(State(state): State<Arc<AppState>>) -> Response {
    Json(state.control.state()).into_response()
}

async fn set_control(
    State(state): State<Arc<AppState>>,
    body: Result<Json<ControlState>, JsonRejection>,
) -> Response {
    match body {
        Ok(Json(change)) => {
            state.control.apply(&change);
            Json(state.control.state()).into_response()
        }
        Err(e) => bad_request(format!(
            "Control body must be JSON like {{\"credits_exhausted\":bool,\"forbidden\":bool,\"down\":bool}}: {e}."
        )),
    }
}

async fn static_file(State(state): State<Arc<AppState>>, Path(path): Path<String>) -> Response {
    let Some(dir) = state.scenario.static_dir.as_deref() else {
        return not_found().await;
    };
    let Some(file) = inputs::safe_rel(dir, std::path::Path::new(&path)) else {
        return not_found().await;
    };
    match tokio::fs::read(&file).await {
        Ok(bytes) => {
            let mime = match file
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                Some("png") => "image/png",
                Some("jpg" | "jpeg") => "image/jpeg",
                Some("webp") => "image/webp",
                Some("gif") => "image/gif",
                Some("tif" | "tiff") => "image/tiff",
                Some("bmp") => "image/bmp",
                _ => "application/octet-stream",
            };
            ([(header::CONTENT_TYPE, mime)], bytes).into_response()
        }
        Err(_) => not_found().await,
    }
}
