//! The receiver of Claid's webhooks: `POST /webhooks/claid` on `webhook.listen`, served by the
//! bounded server ([`crate::http_server`]). It owns the HTTP side only: verification, parsing
//! and handing each verified update to a sink (the pipeline), which decides what it means.
//!
//! Every request is verified before anything else is done with it:
//! - a request elsewhere than `POST /webhooks/claid` is answered 404 (405 for another method);
//! - the `X-Claid-Hmac-SHA256` header must hold an HMAC-SHA256 of the raw body under the shared
//!   secret, in hex (64 characters) or base64 (standard or URL-safe alphabet, padded or not).
//!   A missing or undecodable header is refused (401) before the body is read; a decodable one
//!   is checked against the body with `hmac`'s `verify_slice`, which compares in constant time.
//!   Refusals are counted and logged at most once a minute (with how many since the last line);
//! - the body may be at most [`MAX_BODY`] (413, and a larger `Content-Length` is refused before
//!   anything is read) and must arrive within [`BODY_TIMEOUT`] (408);
//! - a verified body that is no task result (bare or wrapped in `{"data": …}`, see
//!   [`TaskUpdate::parse`]) is answered 400 and counted.
//!
//! A verified final update nobody waits for yet (its submit answer may not be recorded) is
//! first made durable through the [`Keeper`], so that a crash before that answer does not lose
//! it (Claid announces a task once); the restart hands it to the jobs it belongs to.
//!
//! A verified update is handed to the sink, and only then answered 200 (`{"received": true,
//! "task_id": …}`). When the sink stays full for [`SINK_WAIT`] (or the daemon is stopping),
//! the answer is 503 so that Claid may deliver it again; whether Claid retries is not
//! documented, and the daemon polls every task whose webhook is overdue, so an update refused
//! here is late, never lost.
//!
//! The secret comes from `webhook.secret_file` ([`Secret::load`]); the receiver refuses to start
//! without one, and refuses a file others than its owner may read or write. The secret is
//! never logged, and neither is a body: log lines carry a task's id and status.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::http::header::{ALLOW, HeaderName};
use axum::http::{HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, Mac};
use hyper::body::Incoming;
use serde::Serialize;
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::SendTimeoutError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::claid::wire::{TaskRef, TaskUpdate};
use crate::http_server::{self, BodyError, Bounds, error_response};
use crate::os_error::OsCause;
use crate::text::Escaped;

/// The path Claid posts to (the public URL set in Claid's dashboard ends with it).
pub const PATH: &str = "/webhooks/claid";
/// The signature header (HTTP header names are case-insensitive: `X-Claid-Hmac-SHA256`).
pub const SIGNATURE_HEADER: HeaderName = HeaderName::from_static("x-claid-hmac-sha256");
/// Default of `webhook.listen`: loopback only; a reverse proxy brings TLS and the public URL.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8787));
/// Default of `webhook.poll_fallback`: the latest a task is polled when no webhook came.
pub const DEFAULT_POLL_FALLBACK: Duration = Duration::from_secs(120);
/// Largest body read: a batch of 100 results is about 100 KiB.
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// Most connections served at once; at most `MAX_CONNECTIONS × MAX_BODY` (128 MiB) of bodies
/// are read at once. More connections are answered 503 and closed at once.
pub const MAX_CONNECTIONS: usize = 32;
/// How long a client has to send a request's headers (also the keep-alive idle timeout).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a body may take to arrive once the headers are in.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Makes a verified final update durable before it is answered, when the pipeline would keep
/// it for later (nobody waits for its task yet: its submit answer may not be recorded, and a
/// crash then would lose it, since Claid announces a task once). Given the task id and the
/// verified body; `false` when it could not be kept (the answer is then 503).
pub type Keeper = Arc<
    dyn Fn(TaskRef, bytes::Bytes) -> futures_util::future::BoxFuture<'static, bool> + Send + Sync,
>;

/// How long a verified update waits for room in a full sink before the answer is 503.
pub const SINK_WAIT: Duration = Duration::from_secs(2);
/// Largest secret file read.
const MAX_SECRET_FILE: u64 = 64 * 1024;
/// How often, at most, each kind of refusal is logged.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// The bounds of the webhook listener.
const BOUNDS: Bounds = Bounds {
    name: "webhook",
    max_connections: MAX_CONNECTIONS,
    header_timeout: HEADER_TIMEOUT,
    body_timeout: BODY_TIMEOUT,
    max_body: MAX_BODY,
    drain: Duration::from_secs(5),
};

/// The `webhook:` section of the config (off when absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// `webhook.listen`: where `POST /webhooks/claid` is served. Default [`DEFAULT_LISTEN`].
    pub listen: SocketAddr,
    /// `webhook.secret_file`: the file holding the secret set in Claid's dashboard. Required:
    /// the receiver refuses to start without it. Only the path is config; the secret is read
    /// by [`Secret::load`] when the receiver starts, so it never shows in `--print-config`.
    pub secret_file: Option<PathBuf>,
    /// `webhook.poll_fallback`: the latest a task is polled when its webhook has not come.
    /// Default [`DEFAULT_POLL_FALLBACK`].
    pub poll_fallback: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            listen: DEFAULT_LISTEN,
            secret_file: None,
            poll_fallback: DEFAULT_POLL_FALLBACK,
        }
    }
}

/// Errors that keep the receiver from starting.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(
        "webhook.secret_file is not set: the webhook listener refuses to start without a \
         secret; put the secret set in Claid's webhook settings into a file only the service \
         user can read, and name it in webhook.secret_file"
    )]
    SecretMissing,
    #[error(
        "cannot read webhook.secret_file {}: {}",
        crate::text::SecretFilePath(path),
        OsCause(cause)
    )]
    SecretUnreadable {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "webhook.secret_file {} is not a regular file: name the file holding the secret",
        Escaped::path(path)
    )]
    SecretNotAFile { path: PathBuf },
    #[error(
        "webhook.secret_file {} is empty: put the secret set in Claid's webhook settings in it",
        Escaped::path(path)
    )]
    SecretEmpty { path: PathBuf },
    #[error(
        "webhook.secret_file {} may be read or written by users other than its owner and group, or written by its group (mode {mode:04o}): \
         run `chmod 600` on it (or `chmod 640` with the daemon's group, when another user owns it)",
        Escaped::path(path)
    )]
    SecretExposed { path: PathBuf, mode: u32 },
    #[error(
        "cannot listen for webhooks on {addr} (`webhook.listen`): {}; another process (the emulator, the metrics listener or the dashboard) may hold the address: choose another one",
        OsCause(cause)
    )]
    Bind {
        addr: SocketAddr,
        cause: std::io::Error,
    },
}

impl WebhookError {
    /// A stable kebab-case code.
    pub fn code(&self) -> &'static str {
        match self {
            WebhookError::SecretMissing => "webhook-secret-missing",
            WebhookError::SecretUnreadable { .. } => "webhook-secret-unreadable",
            WebhookError::SecretNotAFile { .. } => "webhook-secret-not-a-file",
            WebhookError::SecretEmpty { .. } => "webhook-secret-empty",
            WebhookError::SecretExposed { .. } => "webhook-secret-exposed",
            WebhookError::Bind { .. } => "webhook-bind",
        }
    }
}

/// The shared secret the signatures are made with. Never empty; `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Bytes under which a webhook secret is warned about as guessable.
pub const STRONG_SECRET: usize = 16;

impl Secret {
    /// The secret itself; `None` when empty.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Option<Secret> {
        let bytes = bytes.into();
        if let Ok(text) = std::str::from_utf8(&bytes) {
            crate::text::register_secret(text);
        }
        (!bytes.is_empty()).then_some(Secret(bytes))
    }

    /// Shorter than [`STRONG_SECRET`] bytes: what to tell the operator (validate and the start
    /// warn; the secret is still used, since it is set in Claid's dashboard too).
    pub fn weakness(&self) -> Option<String> {
        (self.0.len() < STRONG_SECRET).then(|| {
            format!(
                "the webhook secret is only {} characters long: whoever can reach the receiver may guess it and forge results; set one of at least 32 random characters (`openssl rand -hex 32`) in the file and in Claid's dashboard",
                self.0.len()
            )
        })
    }

    /// Reads `webhook.secret_file`: the secret is the file's text without surrounding
    /// whitespace. Refused when the key is not set, the file cannot be read, is not a regular
    /// file, is empty, or may be read or written by anyone but its owner (any group or other
    /// permission bit, as ssh treats private keys).
    pub fn load(config: &WebhookConfig) -> Result<Secret, WebhookError> {
        let path = config
            .secret_file
            .as_deref()
            .ok_or(WebhookError::SecretMissing)?;
        Secret::from_file(path)
    }

    /// [`Secret::load`] for a path.
    pub fn from_file(path: &Path) -> Result<Secret, WebhookError> {
        use std::io::Read;

        let unreadable = |cause| WebhookError::SecretUnreadable {
            path: path.to_path_buf(),
            cause,
        };
        let file = std::fs::File::open(path).map_err(unreadable)?;
        // The metadata of the file opened, not of the path again: no race with a rename.
        let metadata = file.metadata().map_err(unreadable)?;
        if !metadata.is_file() {
            return Err(WebhookError::SecretNotAFile {
                path: path.to_path_buf(),
            });
        }
        // Owner-only, or readable by the group too (0640 with the daemon's group, as the API
        // key file may be): anything for other users, or a group that may write, is refused.
        let mode = metadata.permissions().mode() & 0o7777;
        if mode & 0o027 != 0 {
            return Err(WebhookError::SecretExposed {
                path: path.to_path_buf(),
                mode,
            });
        }
        let mut bytes = Vec::new();
        file.take(MAX_SECRET_FILE)
            .read_to_end(&mut bytes)
            .map_err(unreadable)?;
        Secret::new(bytes.trim_ascii()).ok_or_else(|| WebhookError::SecretEmpty {
            path: path.to_path_buf(),
        })
    }
}

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no X-Claid-Hmac-SHA256 header")]
    Missing,
    #[error("the X-Claid-Hmac-SHA256 header is neither hex nor base64 of 32 bytes")]
    Malformed,
    #[error("the signature does not match the body")]
    Mismatch,
}

impl SignatureError {
    fn as_str(self) -> &'static str {
        match self {
            SignatureError::Missing => "missing",
            SignatureError::Malformed => "malformed",
            SignatureError::Mismatch => "mismatch",
        }
    }
}

/// A decoded `X-Claid-Hmac-SHA256` value: 32 bytes, not yet checked against a body.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature([u8; 32]);

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signature(..)")
    }
}

impl Signature {
    /// Decodes the header's value: 64 hex digits (either case), or base64 of 32 bytes in the
    /// standard or the URL-safe alphabet, padded or not. Surrounding whitespace is ignored.
    pub fn parse(value: Option<&HeaderValue>) -> Result<Signature, SignatureError> {
        let text = value
            .ok_or(SignatureError::Missing)?
            .to_str()
            .map_err(|_| SignatureError::Malformed)?
            .trim();
        let decoded = if text.len() == 64 {
            hex::decode(text).map_err(|_| SignatureError::Malformed)?
        } else {
            let indifferent = GeneralPurposeConfig::new()
                .with_decode_padding_mode(DecodePaddingMode::Indifferent);
            let standard = GeneralPurpose::new(&base64::alphabet::STANDARD, indifferent);
            let url_safe = GeneralPurpose::new(&base64::alphabet::URL_SAFE, indifferent);
            standard
                .decode(text)
                .or_else(|_| url_safe.decode(text))
                .map_err(|_| SignatureError::Malformed)?
        };
        <[u8; 32]>::try_from(decoded)
            .map(Signature)
            .map_err(|_| SignatureError::Malformed)
    }

    /// Checks the signature against HMAC-SHA256(secret, body), in constant time (`hmac`'s
    /// `verify_slice`: no early exit at the first differing byte).
    pub fn verify(&self, secret: &Secret, body: &[u8]) -> Result<(), SignatureError> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&secret.0).expect("HMAC accepts keys of any length");
        mac.update(body);
        mac.verify_slice(&self.0)
            .map_err(|_| SignatureError::Mismatch)
    }
}

/// Verifies a request's signature header against its raw body.
pub fn verify(
    secret: &Secret,
    header: Option<&HeaderValue>,
    body: &[u8],
) -> Result<(), SignatureError> {
    Signature::parse(header)?.verify(secret, body)
}

/// HMAC-SHA256(secret, body) in lowercase hex, as Claid signs (for tests and tools).
pub fn sign_hex(secret: &Secret, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(&secret.0).expect("HMAC accepts keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// What the receiver counted; shared with `/metrics` (see [`WebhookCounters::snapshot`]).
#[derive(Debug, Default)]
pub struct WebhookCounters {
    /// `POST /webhooks/claid` requests, whatever became of them.
    received: AtomicU64,
    /// Requests whose signature matched their body.
    verified: AtomicU64,
    /// Verified updates handed to the sink (answered 200).
    delivered: AtomicU64,
    /// Refused 401: signature missing, undecodable or not matching the body.
    rejected_signature: AtomicU64,
    /// Refused 400: verified, but the body is no task result.
    rejected_body: AtomicU64,
    /// Refused 413: body over [`MAX_BODY`].
    rejected_too_large: AtomicU64,
    /// Refused 408 or 400: the body did not arrive in time, or broke off.
    rejected_incomplete: AtomicU64,
    /// Refused 404/405: another path or method (a misconfigured URL or proxy shows here).
    rejected_route: AtomicU64,
    /// Verified updates answered 503 because the sink stayed full or was closed, or because
    /// one nobody waited for yet could not be made durable ([`Keeper`]).
    sink_busy: AtomicU64,
    /// Connections answered 503 because [`MAX_CONNECTIONS`] were being served.
    refused_busy: Arc<AtomicU64>,
    /// Verified updates for task ids the daemon does not know (counted by the pipeline).
    unknown_task: AtomicU64,
}

/// A snapshot of [`WebhookCounters`], for `/metrics` and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WebhookStats {
    pub received: u64,
    pub verified: u64,
    pub delivered: u64,
    pub rejected_signature: u64,
    pub rejected_body: u64,
    pub rejected_too_large: u64,
    pub rejected_incomplete: u64,
    pub rejected_route: u64,
    pub refused_busy: u64,
    pub sink_busy: u64,
    pub unknown_task: u64,
}

impl WebhookCounters {
    /// Counts a verified update whose task id the daemon does not know (the pipeline's call).
    pub fn count_unknown_task(&self) {
        bump(&self.unknown_task);
    }

    pub fn snapshot(&self) -> WebhookStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        WebhookStats {
            received: get(&self.received),
            verified: get(&self.verified),
            delivered: get(&self.delivered),
            rejected_signature: get(&self.rejected_signature),
            rejected_body: get(&self.rejected_body),
            rejected_too_large: get(&self.rejected_too_large),
            rejected_incomplete: get(&self.rejected_incomplete),
            rejected_route: get(&self.rejected_route),
            refused_busy: get(&self.refused_busy),
            sink_busy: get(&self.sink_busy),
            unknown_task: get(&self.unknown_task),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Binds `webhook.listen`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, WebhookError> {
    TcpListener::bind(addr)
        .await
        .map_err(|cause| WebhookError::Bind { addr, cause })
}

/// Serves `POST /webhooks/claid` on `listener` until `cancel`, handing every verified update
/// to `sink` (see the module doc for the answers). Requests in progress at `cancel` finish.
pub async fn serve(
    listener: TcpListener,
    secret: Secret,
    sink: mpsc::Sender<TaskUpdate>,
    keeper: Option<Keeper>,
    counters: Arc<WebhookCounters>,
    cancel: CancellationToken,
) -> Result<(), WebhookError> {
    match listener.local_addr() {
        Ok(addr) => {
            info!(addr = %addr, path = PATH, "Webhook receiver listening");
            if !addr.ip().is_loopback() {
                // Allowed (the TLS proxy may run on another machine), but said once: the
                // receiver speaks plain HTTP, and the docs put it behind a proxy on loopback.
                warn!(addr = %addr, "The webhook receiver listens beyond this machine in plain HTTP; bind `webhook.listen` to 127.0.0.1 behind a TLS proxy unless that proxy runs elsewhere (docs/webhooks.md)");
            }
        }
        Err(err) => info!(error = %OsCause(&err), "Webhook receiver listening"),
    }
    let refused = Arc::clone(&counters.refused_busy);
    let receiver = Arc::new(Receiver {
        secret,
        sink,
        keeper,
        counters,
        signature_log: Throttle::default(),
        route_log: Throttle::default(),
        body_log: Throttle::default(),
        busy_log: Throttle::default(),
    });
    let handler = move |req: Request<Incoming>| Arc::clone(&receiver).handle(req);
    http_server::serve_counted(listener, BOUNDS, handler, cancel, refused).await;
    Ok(())
}

/// What every request needs.
struct Receiver {
    secret: Secret,
    /// The pipeline's end; bounded, so a slow pipeline pushes back (503) instead of growing.
    sink: mpsc::Sender<TaskUpdate>,
    keeper: Option<Keeper>,
    counters: Arc<WebhookCounters>,
    signature_log: Throttle,
    route_log: Throttle,
    body_log: Throttle,
    busy_log: Throttle,
}

impl Receiver {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response {
        if req.uri().path() != PATH {
            bump(&self.counters.rejected_route);
            if let Some(suppressed) = self.route_log.due() {
                warn!(
                    path = %Escaped::str(req.uri().path()), suppressed,
                    "Refused a request to another path than the webhook's (404); check the \
                     proxy and the URL set in Claid; further ones are logged once a minute"
                );
            }
            return error_response(StatusCode::NOT_FOUND, "not found");
        }
        if req.method() != Method::POST {
            bump(&self.counters.rejected_route);
            let mut response =
                error_response(StatusCode::METHOD_NOT_ALLOWED, "webhooks are POSTed");
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("POST"));
            return response;
        }
        bump(&self.counters.received);
        let (parts, body) = req.into_parts();
        // A request that cannot be genuine is refused before its body is read.
        let signature = match Signature::parse(parts.headers.get(SIGNATURE_HEADER)) {
            Ok(signature) => signature,
            Err(err) => return self.unauthorized(err),
        };
        let body = match http_server::read_body(body, &BOUNDS).await {
            Ok(body) => body,
            Err(err) => {
                let counter = match err {
                    BodyError::TooLarge => &self.counters.rejected_too_large,
                    BodyError::TimedOut | BodyError::Broken => &self.counters.rejected_incomplete,
                };
                bump(counter);
                return err.response();
            }
        };
        if let Err(err) = signature.verify(&self.secret, &body) {
            return self.unauthorized(err);
        }
        bump(&self.counters.verified);
        let update = match TaskUpdate::parse(&body) {
            Ok(update) => update,
            Err(err) => {
                bump(&self.counters.rejected_body);
                if let Some(suppressed) = self.body_log.due() {
                    warn!(
                        error = %Escaped::str(&err.to_string()), bytes = body.len(), suppressed,
                        "Refused a signed webhook whose body is no task result (400); further \
                         ones are logged once a minute"
                    );
                }
                return error_response(StatusCode::BAD_REQUEST, "the body is no task result");
            }
        };
        let task_id = update.id();
        let status = update.status().as_str().to_owned();
        let kind = match &update {
            TaskUpdate::Async(_) => "async",
            TaskUpdate::Batch(_) => "batch",
        };
        debug!(task_id, status = %Escaped::str(&status), kind, "Webhook verified");
        if update.status().is_terminal()
            && let Some(keep) = &self.keeper
            && !keep(update.task(), body.clone()).await
        {
            bump(&self.counters.sink_busy);
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot keep it now; deliver this webhook again later",
            );
        }
        match self.sink.send_timeout(update, SINK_WAIT).await {
            Ok(()) => {
                bump(&self.counters.delivered);
                axum::Json(serde_json::json!({"received": true, "task_id": task_id}))
                    .into_response()
            }
            Err(err) => {
                bump(&self.counters.sink_busy);
                let closed = matches!(err, SendTimeoutError::Closed(_));
                if let Some(suppressed) = self.busy_log.due() {
                    warn!(
                        task_id, status = %Escaped::str(&status), closed, suppressed,
                        "Answered a webhook 503: the pipeline did not take it in time; the \
                         task is polled if Claid does not deliver it again"
                    );
                }
                error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy; deliver this webhook again later",
                )
            }
        }
    }

    fn unauthorized(&self, err: SignatureError) -> Response {
        bump(&self.counters.rejected_signature);
        if let Some(suppressed) = self.signature_log.due() {
            warn!(
                reason = err.as_str(),
                suppressed,
                "Refused a webhook with a missing or wrong signature (401); check that the \
                 secret in Claid's webhook settings is the one in webhook.secret_file; further \
                 ones are logged once a minute"
            );
        }
        error_response(StatusCode::UNAUTHORIZED, "missing or wrong signature")
    }
}

/// Lets one log line of a kind through per [`LOG_EVERY`], and counts the ones it held back.
#[derive(Debug, Default)]
struct Throttle {
    /// When the last line went out, and how many were held back since. A std mutex: held only
    /// to read and bump them.
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    /// `Some(held back since the last line)` when a line is due.
    fn due(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (last, held) = &mut *state;
        if last.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
            *last = Some(Instant::now());
            Some(std::mem::take(held))
        } else {
            *held += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose;

    use super::*;

    const BODY: &[u8] = br#"{"id": 7, "status": "DONE", "result_url": "https://x/7"}"#;

    fn secret() -> Secret {
        Secret::new(*b"whsec-test-0123456789").expect("non-empty")
    }

    fn header(value: &str) -> HeaderValue {
        HeaderValue::from_str(value).expect("header value")
    }

    fn mac(secret: &Secret, body: &[u8]) -> Vec<u8> {
        hex::decode(sign_hex(secret, body)).expect("hex")
    }

    /// One check per signature form: `(header value or None, expected)`.
    fn check(value: Option<String>, expect: Result<(), SignatureError>) {
        let value = value.map(|v| header(&v));
        assert_eq!(
            verify(&secret(), value.as_ref(), BODY),
            expect,
            "header {value:?}"
        );
    }

    #[test]
    fn signatures_in_hex_and_base64_are_accepted() {
        let tag = mac(&secret(), BODY);
        let b64 = |engine: &GeneralPurpose| engine.encode(&tag);
        check(Some(hex::encode(&tag)), Ok(()));
        check(Some(hex::encode_upper(&tag)), Ok(()));
        check(Some(format!("  {} ", hex::encode(&tag))), Ok(()));
        check(Some(b64(&general_purpose::STANDARD)), Ok(()));
        check(Some(b64(&general_purpose::STANDARD_NO_PAD)), Ok(()));
        check(Some(b64(&general_purpose::URL_SAFE)), Ok(()));
        check(Some(b64(&general_purpose::URL_SAFE_NO_PAD)), Ok(()));
    }

    /// RFC 4231 test case 2: the signing is standard HMAC-SHA256.
    #[test]
    fn signing_matches_the_rfc_4231_vector() {
        let key = Secret::new(*b"Jefe").expect("non-empty");
        assert_eq!(
            sign_hex(&key, b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn wrong_missing_and_malformed_signatures_are_refused() {
        let tag = mac(&secret(), BODY);
        let other = Secret::new(*b"another-secret").expect("non-empty");
        check(None, Err(SignatureError::Missing));
        check(Some(String::new()), Err(SignatureError::Malformed));
        check(
            Some("not a signature".into()),
            Err(SignatureError::Malformed),
        );
        check(Some(sign_hex(&other, BODY)), Err(SignatureError::Mismatch));
        let mut flipped = tag.clone();
        flipped[31] ^= 1;
        check(Some(hex::encode(&flipped)), Err(SignatureError::Mismatch));
        // The tag of another body, and the right tag truncated or extended.
        check(
            Some(sign_hex(&secret(), b"{}")),
            Err(SignatureError::Mismatch),
        );
        check(
            Some(hex::encode(&tag[..31])),
            Err(SignatureError::Malformed),
        );
        let mut longer = tag.clone();
        longer.push(0);
        check(
            Some(general_purpose::STANDARD.encode(&longer)),
            Err(SignatureError::Malformed),
        );
        // 64 characters that are not hex are not read as base64 either.
        check(Some("z".repeat(64)), Err(SignatureError::Malformed));
    }

    /// The comparison is `hmac`'s constant-time `verify_slice`, the only place a tag is
    /// compared: the source holds no other comparison of a signature's bytes.
    #[test]
    fn the_signature_is_compared_in_constant_time() {
        let source = include_str!("webhook.rs");
        let code = &source[..source.find("#[cfg(test)]").expect("tests follow the code")];
        assert_eq!(code.matches(".verify_slice(").count(), 1);
        for forbidden in [
            "self.0 ==",
            "== self.0",
            ".0.eq(",
            "ct_eq",
            "starts_with(&self.0",
        ] {
            assert!(!code.contains(forbidden), "{forbidden} compares a tag");
        }
    }

    #[test]
    fn the_secret_never_shows_in_debug() {
        let secret = secret();
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        assert!(Secret::new(Vec::new()).is_none());
        let weak = Secret::new(*b"x").expect("non-empty").weakness();
        assert!(
            weak.as_deref()
                .is_some_and(|w| w.starts_with("the webhook secret is only 1 characters long")),
            "{weak:?}"
        );
        assert_eq!(Secret::new([b'k'; 32]).expect("non-empty").weakness(), None);
    }

    #[test]
    fn a_secret_file_is_read_trimmed_and_refused_when_others_may_read_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("webhook-secret");
        let config = WebhookConfig {
            secret_file: Some(path.clone()),
            ..WebhookConfig::default()
        };
        let set_mode = |mode| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod")
        };

        let missing = Secret::load(&WebhookConfig::default()).expect_err("no secret_file");
        assert_eq!(missing.code(), "webhook-secret-missing");
        assert!(missing.to_string().contains("webhook.secret_file"));

        let absent = Secret::load(&config).expect_err("no file");
        assert_eq!(absent.code(), "webhook-secret-unreadable");
        assert!(absent.to_string().contains("ENOENT"), "{absent}");

        std::fs::write(&path, " \n").expect("write");
        set_mode(0o600);
        let empty = Secret::load(&config).expect_err("empty");
        assert_eq!(empty.code(), "webhook-secret-empty");

        std::fs::write(&path, "whsec-test-0123456789\n").expect("write");
        for mode in [0o644, 0o604, 0o620, 0o660, 0o602] {
            set_mode(mode);
            let exposed = Secret::load(&config).expect_err("exposed");
            assert_eq!(exposed.code(), "webhook-secret-exposed", "{mode:o}");
            assert!(exposed.to_string().contains("chmod 600"), "{exposed}");
        }
        // Readable by the group too (the daemon's, when another user owns the file), as the
        // API key file may be: accepted.
        set_mode(0o640);
        Secret::load(&config).expect("owner and group may read");
        set_mode(0o400);
        let loaded = Secret::load(&config).expect("owner-only file");
        let tag = mac(&loaded, BODY);
        assert_eq!(tag, mac(&secret(), BODY), "the trimmed text is the secret");

        let not_a_file = Secret::from_file(dir.path()).expect_err("a directory");
        assert_eq!(
            not_a_file.code(),
            "webhook-secret-not-a-file",
            "{not_a_file}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_are_logged_at_most_once_a_minute_with_the_count_held_back() {
        let throttle = Throttle::default();
        assert_eq!(throttle.due(), Some(0));
        assert_eq!(throttle.due(), None);
        assert_eq!(throttle.due(), None);
        tokio::time::advance(LOG_EVERY).await;
        assert_eq!(throttle.due(), Some(2));
        assert_eq!(throttle.due(), None);
    }
}
