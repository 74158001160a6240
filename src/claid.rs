//! The Claid API client: submit, poll (via `result_url`), download and sync upload, behind one
//! shared rate limiter; maps HTTP status and bodies to classified [`ClaidError`]s. The only
//! module that names reqwest.
//!
//! Classification happens here, at the call site, because only here is it known whether a
//! request could have reached Claid: a submit that was sent but whose answer was lost is
//! [`ErrorClass::Ambiguous`] (Claid has no idempotency key, docs/claid-api.md). Transport errors
//! name the host and the OS cause (`connect to 127.0.0.1:9: ECONNREFUSED: connection refused`).
//!
//! One retry layer: [`Client::submit_once`], [`Client::poll_once`], [`Client::upload_once`],
//! [`Client::download_once`] and [`Client::probe`] make exactly one HTTP attempt each and
//! return the classified error; a 429 closes the shared [`limiter`] gate for its
//! `RateLimit-Reset` and comes back as [`ClaidError::RateLimited`] (transient). Whether and
//! when to try again is [`crate::retry`]'s decision, made by its caller.
//!
//! Transitional: `submit`, `poll`, `upload` and `download` still retry inside the client
//! (backoff for transient errors, 429s waited out) for the pipeline that has not moved to
//! [`crate::retry::Policy`] yet; they go once it has.

pub mod limiter;
pub mod request;
pub mod wire;

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::codes::FailureCode;
use bytes::{Bytes, BytesMut};
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use tokio::time::Instant;

use self::limiter::{DEFAULT_RESET, Limiter, ServerWord, parse_remaining, parse_reset};
use crate::os_error;
use crate::text::{self, Escaped};

/// A limiter wait this long means the rate limit binds (the pipeline then rations polls).
pub const SIGNIFICANT_WAIT: Duration = Duration::from_millis(20);
/// Largest API answer body read (success or error); real Claid JSON is a few kilobytes.
const MAX_BODY: usize = 8 * 1024 * 1024;

/// What the client needs to know; built by the daemon from `config::ApiConfig`.
#[derive(Clone)]
pub struct ClientConfig {
    /// API root including the version prefix, e.g. `https://api.claid.ai/v1` (no trailing `/`
    /// needed). Polls do not use it: they follow the `result_url` Claid returned.
    pub base_url: String,
    /// Bearer key. Never printed: `Debug` redacts it and headers carrying it are sensitive.
    pub api_key: String,
    /// Claid's per-second quota (4 by default on Claid's side).
    pub requests_per_second: NonZeroU32,
    /// Claid's per-minute quota (120 by default on Claid's side).
    pub requests_per_minute: NonZeroU32,
    /// Total time for one HTTP request (connect, send, headers, body); per attempt.
    pub request_timeout: Duration,
    /// Total time for one synchronous upload, which Claid answers once the edit is done
    /// (at least `request_timeout`).
    pub upload_timeout: Duration,
    /// Largest result we accept to download; guards memory against a hostile or broken URL.
    pub max_download_bytes: u64,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &"<redacted>")
            .field("requests_per_second", &self.requests_per_second)
            .field("requests_per_minute", &self.requests_per_minute)
            .field("request_timeout", &self.request_timeout)
            .field("upload_timeout", &self.upload_timeout)
            .field("max_download_bytes", &self.max_download_bytes)
            .finish()
    }
}

/// Which API operation a request served; labels logs and [`ClientStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    Submit,
    Poll,
    Download,
    Upload,
    Probe,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Submit => "submit",
            Endpoint::Poll => "poll",
            Endpoint::Download => "download",
            Endpoint::Upload => "upload",
            Endpoint::Probe => "probe",
        }
    }

    /// A POST that may cost money: once sent, a lost answer is ambiguous, not transient.
    fn is_billable_post(self) -> bool {
        matches!(self, Endpoint::Submit | Endpoint::Upload)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the caller should do with a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Try again later (the retry policy decides when and how often).
    Transient,
    /// The request may have reached Claid (and may be billed); the pipeline's in-doubt policy
    /// decides. Never retried by the client.
    Ambiguous,
    /// This job cannot succeed as is; fail it with Claid's message.
    Job,
    /// Account-wide trouble (key, credits, scope, configuration): pause submitting.
    Systemic,
}

/// Every failure of the client. Messages are short; the stable code is [`ClaidError::code`].
#[derive(Debug, thiserror::Error)]
pub enum ClaidError {
    #[error("invalid client configuration: {about}")]
    Config { about: &'static str },
    #[error("invalid {endpoint} url")]
    BadUrl {
        endpoint: Endpoint,
        about: &'static str,
    },
    /// Nothing was sent: the API could not be reached (refused, unreachable, DNS, TLS).
    #[error("{endpoint}: connect to {addr}: {cause}")]
    Connect {
        endpoint: Endpoint,
        /// `host:port` of the request.
        addr: String,
        /// The OS error (`ECONNREFUSED: connection refused`) or the innermost message.
        cause: String,
    },
    /// Nothing was sent: the TLS handshake failed in a way no retry mends (a certificate the
    /// daemon cannot trust, a server that does not speak TLS, a protocol it refuses). See
    /// [`tls_refusal`].
    #[error("{endpoint}: connect to {addr}: {cause}")]
    Tls {
        endpoint: Endpoint,
        addr: String,
        /// What the handshake met, beginning "TLS handshake failed".
        cause: String,
    },
    #[error(
        "{endpoint}: no answer from {addr} within {}",
        if *endpoint == Endpoint::Upload { "api.upload_timeout" } else { "api.request_timeout" }
    )]
    Timeout {
        endpoint: Endpoint,
        addr: String,
        request_id: Option<String>,
    },
    #[error("{endpoint}: the exchange with {addr} broke off: {cause}")]
    Network {
        endpoint: Endpoint,
        addr: String,
        request_id: Option<String>,
        cause: String,
    },
    /// A 429: the shared limiter's gate is already closed until `retry_after` has passed.
    #[error("{endpoint}: rate limited (429), retry after {:.1} s", retry_after.as_secs_f64())]
    RateLimited {
        endpoint: Endpoint,
        retry_after: Duration,
        request_id: Option<String>,
    },
    #[error("{endpoint}: server error {status}")]
    Server {
        endpoint: Endpoint,
        status: u16,
        request_id: Option<String>,
        message: Option<String>,
    },
    #[error("{endpoint}: rejected with {status}: {}", Escaped::str(error_message))]
    Rejected {
        endpoint: Endpoint,
        status: u16,
        request_id: Option<String>,
        /// Claid's own code, e.g. "9000" (empty when the body was not an envelope).
        error_code: String,
        error_type: String,
        error_message: String,
        /// Dotted field path → messages, for validation errors.
        error_details: BTreeMap<String, Vec<String>>,
        /// The body was an error document (JSON in one of the shapes Claid writes), not a
        /// page from something in front of it (an nginx 404 page, an empty body).
        documented: bool,
    },
    #[error(
        "{endpoint}: account problem {status}: {}",
        Escaped::str(error_message)
    )]
    Account {
        endpoint: Endpoint,
        status: u16,
        request_id: Option<String>,
        error_code: String,
        error_message: String,
    },
    /// The API answered with a redirect (never followed: a POST sent again elsewhere could
    /// be billed twice); the daemon's `api.base_url` is out of date.
    #[error(
        "{endpoint}: Claid answered {status}, a redirect to {location}: the API is elsewhere; set `api.base_url` to the new address (the daemon follows no redirect of the API, since a request sent again may be billed again)"
    )]
    Redirected {
        endpoint: Endpoint,
        status: u16,
        location: String,
        request_id: Option<String>,
    },
    #[error("{endpoint}: unexpected response {status}: {about}")]
    BadResponse {
        endpoint: Endpoint,
        status: u16,
        request_id: Option<String>,
        about: &'static str,
    },
    /// A URL (a result's; the API's redirects are never followed) that redirects past the
    /// client's limit: a loop, no outage of its host.
    #[error(
        "{endpoint}: {addr} redirects in a loop (more than 10 redirects); the URL leads to no file"
    )]
    RedirectLoop { endpoint: Endpoint, addr: String },
    #[error("download: result gone ({status})")]
    ResultGone {
        status: u16,
        request_id: Option<String>,
    },
    #[error("download: failed with {status}")]
    DownloadStatus {
        status: u16,
        request_id: Option<String>,
    },
    #[error("download: larger than {limit} bytes")]
    TooLarge {
        limit: u64,
        request_id: Option<String>,
    },
    #[error(
        "download: {}",
        match (expected, image_end) {
            (_, Some(EMPTY_BODY)) => "the body was empty: no image".to_owned(),
            (Some(e), None) => format!("truncated at {received} bytes of {e}"),
            (_, Some(why)) => format!("truncated at {received} bytes (the body ended early: {why})"),
            (None, None) => format!("truncated at {received} bytes (the body broke off)"),
        }
    )]
    Truncated {
        /// The announced length, when the answer had one.
        expected: Option<u64>,
        received: u64,
        request_id: Option<String>,
        /// Why a body that ended cleanly is no whole image ([`crate::output::check::cut_short`]).
        image_end: Option<&'static str>,
    },
}

/// [`ClaidError::Truncated`]'s `image_end` for a body that ended cleanly with no byte.
pub const EMPTY_BODY: &str = "the body is empty";

impl ClaidError {
    /// What the caller should do; see the module doc and ARCHITECTURE.md.
    pub fn class(&self) -> ErrorClass {
        use ClaidError::*;
        match self {
            Config { .. } => ErrorClass::Systemic,
            BadUrl { .. } => ErrorClass::Job,
            Connect { .. } => ErrorClass::Transient,
            // The API's certificate or protocol is wrong for every call alike: submitting
            // pauses (and `run --once` ends) rather than waiting out an outage that is none.
            // A result's host is another one: its download is asked again on its budget.
            Tls { endpoint, .. } if *endpoint != Endpoint::Download => ErrorClass::Systemic,
            Tls { .. } => ErrorClass::Transient,
            Timeout { endpoint, .. } | Network { endpoint, .. } => {
                if endpoint.is_billable_post() {
                    ErrorClass::Ambiguous
                } else {
                    ErrorClass::Transient
                }
            }
            RateLimited { .. } => ErrorClass::Transient,
            // A gateway that gave up (502/504, and a CDN's 520 "unknown error" and 524 "a
            // timeout occurred", both answered after the origin took the request) may have
            // handed a POST on to Claid already.
            // `501 Not Implemented` to a submit says, like a 405, that the endpoint is not
            // there (`api.base_url` is wrong): it was retried as an outage, 118 POSTs in 30 s.
            Server {
                endpoint,
                status: 501,
                ..
            } if endpoint.is_billable_post() => ErrorClass::Systemic,
            Server {
                endpoint, status, ..
            } => {
                if endpoint.is_billable_post() && matches!(status, 502 | 504 | 520 | 524) {
                    ErrorClass::Ambiguous
                } else {
                    ErrorClass::Transient
                }
            }
            // Claid's edit endpoints answer no 404 or 405 about an image (their documented
            // errors are 401, 402, 403, 422 and 429): such an answer says the endpoint is not
            // there, so `api.base_url` is wrong, for every image alike.
            Rejected {
                endpoint,
                status: 404 | 405,
                ..
            } if endpoint.is_billable_post() => ErrorClass::Systemic,
            Rejected { .. } => ErrorClass::Job,
            Account { .. } | Redirected { .. } => ErrorClass::Systemic,
            // Claid accepted a billable request but its answer cannot be read: the task (or
            // edit) exists and may be billed. In doubt, and never sent again on its own: the
            // pipeline holds it whatever `in_doubt` says ([`ClaidError::accepted_unread`]).
            BadResponse { .. } if self.accepted_unread() => ErrorClass::Ambiguous,
            BadResponse { .. } => ErrorClass::Transient,
            // A result URL that answers 403/404 long before its 24 hours are up is most
            // likely not propagated yet: asked again on the download's budget, then failed.
            ResultGone { .. } => ErrorClass::Transient,
            TooLarge { .. } => ErrorClass::Job,
            // Any other refusal of a result (a 400 or 401 of a signed URL a clock skew makes
            // not valid yet): asked again on the download's budget like a 403, never failing a
            // billed image at the first answer.
            DownloadStatus { .. } => ErrorClass::Transient,
            Truncated { .. } => ErrorClass::Transient,
            // Asked again on the download's budget (the loop may be a moment's), then failed.
            RedirectLoop { .. } => ErrorClass::Transient,
        }
    }

    /// A 404 whose body is no error document of Claid's (a proxy's or gateway's page, or
    /// nothing): not Claid saying it does not know the task.
    pub fn bare_not_found(&self) -> bool {
        matches!(
            self,
            ClaidError::Rejected {
                status: 404,
                documented: false,
                ..
            }
        )
    }

    /// The HTTP status Claid (or the download's host) answered, when the error is an answer.
    pub fn http_status(&self) -> Option<u16> {
        use ClaidError::*;
        match self {
            Server { status, .. }
            | Rejected { status, .. }
            | Account { status, .. }
            | Redirected { status, .. }
            | BadResponse { status, .. }
            | ResultGone { status, .. }
            | DownloadStatus { status, .. } => Some(*status),
            RateLimited { .. } => Some(429),
            _ => None,
        }
    }

    /// Stable kebab-case code for stores, reports and metrics (never the Display text).
    pub fn code(&self) -> FailureCode {
        use ClaidError::*;
        use FailureCode as C;
        match self {
            Config { .. } => C::ClientConfig,
            BadUrl { .. } => C::BadUrl,
            Connect { .. } | Tls { .. } => C::ConnectFailed,
            Timeout { .. } => C::Timeout,
            Network { .. } => C::ConnectionLost,
            RateLimited { .. } => C::RateLimited,
            Server { .. } => C::ServerError,
            Rejected { status, .. } => match status {
                400 => C::ClaidBadRequest,
                404 => C::ClaidNotFound,
                409 => C::ClaidConflict,
                413 => C::ClaidTooLarge,
                415 => C::ClaidUnsupportedMedia,
                422 => C::ClaidInvalidRequest,
                _ => C::ClaidRejected,
            },
            Account { status, .. } => match status {
                401 => C::ClaidUnauthorized,
                402 => C::ClaidOutOfCredits,
                _ => C::ClaidForbidden,
            },
            BadResponse { .. } | Redirected { .. } => C::BadResponse,
            ResultGone { .. } => C::ResultExpired,
            DownloadStatus { .. } => C::DownloadFailed,
            TooLarge { .. } => C::DownloadTooLarge,
            Truncated { .. } => C::DownloadTruncated,
            RedirectLoop { .. } => C::DownloadFailed,
        }
    }

    /// The `x-request-id` of the response that caused this error, when there was one.
    pub fn request_id(&self) -> Option<&str> {
        use ClaidError::*;
        match self {
            Timeout { request_id, .. }
            | Network { request_id, .. }
            | RateLimited { request_id, .. }
            | Server { request_id, .. }
            | Rejected { request_id, .. }
            | Account { request_id, .. }
            | Redirected { request_id, .. }
            | BadResponse { request_id, .. }
            | ResultGone { request_id, .. }
            | DownloadStatus { request_id, .. }
            | TooLarge { request_id, .. }
            | Truncated { request_id, .. } => request_id.as_deref(),
            Config { .. } | BadUrl { .. } | Connect { .. } | Tls { .. } | RedirectLoop { .. } => {
                None
            }
        }
    }

    /// The daemon had no file descriptor left for the request (EMFILE, ENFILE): the machine's
    /// failure, not the remote host's.
    pub fn out_of_descriptors(&self) -> bool {
        let text = self.to_string();
        text.contains("EMFILE") || text.contains("ENFILE")
    }

    /// A submit or upload Claid answered with a 2xx whose body is not the expected JSON, or
    /// with `303 See Other`: it was accepted (and may be billed), but its task id or result is
    /// unknown.
    pub fn accepted_unread(&self) -> bool {
        matches!(self, ClaidError::BadResponse { endpoint, status, .. }
            if endpoint.is_billable_post() && ((200..300).contains(status) || *status == 303))
    }

    /// How long the server asked us to stay away, when it said so.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClaidError::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// Claid's own `error_message`, when the server sent one.
    pub fn claid_message(&self) -> Option<&str> {
        match self {
            ClaidError::Rejected { error_message, .. }
            | ClaidError::Account { error_message, .. } => Some(error_message),
            ClaidError::Server { message, .. } => message.as_deref(),
            _ => None,
        }
    }

    /// Whether nothing was sent because the API could not be reached: during an outage every
    /// call fails this way, and it is not the job's fault (see [`crate::retry`]).
    /// A result host's failed TLS handshake is one too; the API's pauses instead
    /// ([`ClaidError::class`]).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClaidError::Connect { .. }
                | ClaidError::Tls {
                    endpoint: Endpoint::Download,
                    ..
                }
        )
    }
}

/// Which kind of Claid task an id names: where it is polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    Async,
    Batch,
}

impl TaskKind {
    fn path(self) -> &'static str {
        match self {
            TaskKind::Async => "async",
            TaskKind::Batch => "batch",
        }
    }
}

/// The client's rate limiter let one request go (see [`Client::turn`]); spent by the call it
/// is given to.
/// Not spent (its caller changed its mind: the job was taken meanwhile), it gives its slot
/// back when dropped.
#[must_use = "a turn is one request of the rate limit's budget"]
pub struct Turn {
    slot: Option<limiter::Slot>,
    limiter: Arc<Limiter>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.limiter.release(slot.at);
        }
    }
}

/// A submit Claid accepted.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub task_id: u64,
    /// Poll exactly this URL (it may carry another prefix than `base_url`, docs/claid-api.md).
    pub result_url: String,
    pub request_id: Option<String>,
}

/// A batch Claid accepted.
#[derive(Debug, Clone)]
pub struct BatchAccepted {
    pub batch_id: u64,
    /// Poll exactly this URL.
    pub result_url: String,
    pub request_id: Option<String>,
}

/// One poll answer of a batch.
#[derive(Debug, Clone)]
pub struct PolledBatch {
    pub batch: wire::BatchTask,
    pub request_id: Option<String>,
}

/// One poll answer.
#[derive(Debug, Clone)]
pub struct Polled {
    pub task: wire::AsyncTask,
    pub request_id: Option<String>,
}

/// A finished sync upload edit.
#[derive(Debug, Clone)]
pub struct Uploaded {
    pub response: wire::EditResponse,
    pub request_id: Option<String>,
}

/// Counters for `/metrics`; a snapshot taken by [`Client::stats`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientStats {
    /// Responses by endpoint and HTTP status (429s included).
    pub responses: BTreeMap<(Endpoint, u16), u64>,
    /// Requests that got no HTTP response (connect error, timeout, reset), by endpoint.
    pub transport_errors: BTreeMap<Endpoint, u64>,
    /// 429 answers seen.
    pub rate_limited: u64,
    /// Calls that had to wait in the limiter (quota or header gate).
    pub limiter_waits: u64,
    /// Sum of those waits.
    pub limiter_wait_total: Duration,
    /// Calls whose wait was at least [`SIGNIFICANT_WAIT`].
    pub limiter_pressure: u64,
    /// When the last of them was let through.
    pub last_pressure_at: Option<Instant>,
    /// Backoff retries of transient errors made by the legacy retrying calls.
    pub retries: u64,
}

impl ClientStats {
    /// Total responses of one endpoint, any status.
    pub fn responses_of(&self, endpoint: Endpoint) -> u64 {
        self.responses
            .iter()
            .filter(|((e, _), _)| *e == endpoint)
            .map(|(_, n)| n)
            .sum()
    }
}

/// Redirects on the API's origin a poll follows (see `Client::get_poll`).
const MAX_POLL_REDIRECTS: u32 = 3;

/// The shared Claid client; cheap to clone (everything is behind `Arc`s).
#[derive(Clone)]
pub struct Client {
    /// For API calls: carries no credentials itself and never follows redirects, so the
    /// per-request `Authorization` header cannot be replayed elsewhere.
    api: reqwest::Client,
    /// For downloads of `tmp_url`s: never sees the API key; follows a few redirects.
    downloads: reqwest::Client,
    /// `base_url` parsed, without a trailing slash; also the only origin polls may target.
    base: Url,
    /// `Bearer <key>`, marked sensitive so reqwest never prints it; `None` for an empty key
    /// (e.g. against a local emulator), so no `Authorization` header is sent at all.
    auth: Option<HeaderValue>,
    /// Shared by every clone: Claid's quotas are per account, not per caller.
    limiter: Arc<Limiter>,
    /// Shared counters for `/metrics`; a std mutex held only to bump a few numbers.
    stats: Arc<Mutex<ClientStats>>,
    /// Cap on one download, from `limits.max_download_bytes`.
    max_download_bytes: u64,
    /// Timeout of one synchronous upload (the edit happens before the answer).
    upload_timeout: Duration,
    /// Requests per second the configured quotas allow over a minute and more.
    sustained_rate: f64,
    /// Told the latency of every answered call (API and downloads), for `/metrics`.
    latency_observer: Option<LatencyObserver>,
    /// API calls on the wire and not yet answered: an API that accepts connections and never
    /// answers is an outage long before the request timeout ends each call.
    unanswered: Arc<Unanswered>,
    /// Submits and uploads on the wire (billable once Claid has them): a stop waits for
    /// their answers, so they are not in doubt at the next start.
    billable: Arc<std::sync::atomic::AtomicUsize>,
    /// Billable calls from before they are sent until their answer is recorded
    /// ([`Client::until_recorded`]).
    unrecorded: Arc<std::sync::atomic::AtomicUsize>,
}

/// One submit or upload on the wire, or answered and not yet recorded (see
/// [`Client::billable_on_the_wire`], [`Client::until_recorded`]).
pub struct Billable(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Billable {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The API calls sent and not yet answered, by when each was sent (after the rate limiter).
#[derive(Debug, Default)]
pub struct Unanswered {
    inner: Mutex<(u64, BTreeMap<u64, Instant>)>,
}

impl Unanswered {
    /// When the longest-waiting call still unanswered that was sent after `after` (all of
    /// them: `None`) was sent. Calls are kept in the order they were sent.
    pub fn oldest_after(&self, after: Option<Instant>) -> Option<Instant> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner
            .1
            .values()
            .copied()
            .find(|sent| after.is_none_or(|t| *sent > t))
    }

    /// Records a call sent now; the returned guard forgets it when dropped (answered, failed
    /// or cancelled).
    fn sent(&self) -> OnTheWire<'_> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let id = inner.0;
        inner.0 += 1;
        inner.1.insert(id, Instant::now());
        OnTheWire { calls: self, id }
    }
}

/// One call on the wire (see [`Unanswered::sent`]).
struct OnTheWire<'a> {
    calls: &'a Unanswered,
    id: u64,
}

impl Drop for OnTheWire<'_> {
    fn drop(&mut self) {
        let mut inner = self
            .calls
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        inner.1.remove(&self.id);
    }
}

/// Receives the endpoint and latency of each answered call.
pub type LatencyObserver = Arc<dyn Fn(Endpoint, Duration) + Send + Sync>;

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("api_key", &"<redacted>")
            .field("max_download_bytes", &self.max_download_bytes)
            .finish_non_exhaustive()
    }
}

/// The longest one download of a result may take in all while bytes keep coming (each
/// silence is bounded by `api.request_timeout`): 256 MB (`limits.max_download_bytes`'s
/// default) at about 0.5 MB/s.
const MAX_DOWNLOAD_TIME: Duration = Duration::from_secs(600);

/// One HTTP answer read in full (API calls only; downloads stream).
struct Answer {
    status: StatusCode,
    request_id: Option<String>,
    body: Bytes,
}

/// Whether `url` holds credentials (`user:password@host`).
pub fn has_credentials(url: &Url) -> bool {
    !url.username().is_empty() || url.password().is_some()
}

impl Client {
    /// Submits and uploads sent and not yet answered: Claid may bill them, and a stop that
    /// cut them off would leave them in doubt.
    pub fn billable_on_the_wire(&self) -> usize {
        // Every billable call of the pipeline is also counted until recorded: the larger
        // count, not the sum (which told each call twice).
        let sent = self.billable.load(std::sync::atomic::Ordering::SeqCst);
        sent.max(self.unrecorded.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Counts one billable call in [`Client::billable_on_the_wire`] from now (before it is
    /// sent) until the guard is dropped (the caller has recorded its answer). The client's own
    /// count ends with the answer: an announcement heard before the answer was recorded was
    /// then told from no submit at all and counted `unknown_task`, then handed to its job; a
    /// stop waited for the answer but not for its record.
    pub fn until_recorded(&self) -> Billable {
        self.unrecorded
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Billable(self.unrecorded.clone())
    }

    /// Builds the client; fails (Systemic, `client-config`) on a bad base URL, a key that cannot
    /// be a header, or a zero timeout. No request is made.
    pub fn new(cfg: ClientConfig) -> Result<Client, ClaidError> {
        if cfg.request_timeout.is_zero() {
            return Err(ClaidError::Config {
                about: "request_timeout must be positive",
            });
        }
        let mut base =
            Url::parse(cfg.base_url.trim_end_matches('/')).map_err(|_| ClaidError::Config {
                about: "base_url is not a url",
            })?;
        // Credentials in the URL are never sent: the HTTP client would add them as a second
        // `Authorization` header beside the key's, which breaks authentication (the daemon
        // warns at its start; see `has_credentials`).
        if has_credentials(&base) {
            let _ = base.set_username("");
            let _ = base.set_password(None);
        }
        if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
            return Err(ClaidError::Config {
                about: "base_url must be http(s)",
            });
        }
        let key = cfg.api_key.trim();
        let auth = if key.is_empty() {
            None
        } else {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                ClaidError::Config {
                    about: "api key has characters not allowed in a header",
                }
            })?;
            value.set_sensitive(true);
            Some(value)
        };
        // Shorter than the total timeout, so a connect that hangs ends as a connect error
        // (nothing sent, safe to retry) rather than as an ambiguous timeout.
        let connect_timeout = (cfg.request_timeout / 2).min(Duration::from_secs(10));
        let user_agent = concat!("claid-hotfolder/", env!("CARGO_PKG_VERSION"));
        let api = reqwest::Client::builder()
            .user_agent(user_agent)
            .timeout(cfg.request_timeout)
            .connect_timeout(connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            // Shorter than common server keep-alives (60-75 s), so a submit is rarely written
            // onto a connection the server is closing (which would make it ambiguous).
            .pool_idle_timeout(Duration::from_secs(20))
            .build()
            .map_err(|_| ClaidError::Config {
                about: "http client could not be built",
            })?;
        // A result may be large and its host slow: `request_timeout` bounds a silence (no
        // byte for that long), and the whole download gets at least `MAX_DOWNLOAD_TIME`.
        let downloads = reqwest::Client::builder()
            .user_agent(user_agent)
            .read_timeout(cfg.request_timeout)
            .timeout(cfg.request_timeout.max(MAX_DOWNLOAD_TIME))
            .connect_timeout(connect_timeout)
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .map_err(|_| ClaidError::Config {
                about: "http client could not be built",
            })?;
        Ok(Client {
            api,
            downloads,
            base,
            auth,
            limiter: Arc::new(Limiter::new(
                cfg.requests_per_second,
                cfg.requests_per_minute,
            )),
            stats: Arc::new(Mutex::new(ClientStats::default())),
            max_download_bytes: cfg.max_download_bytes,
            upload_timeout: cfg.upload_timeout.max(cfg.request_timeout),
            sustained_rate: f64::from(cfg.requests_per_second.get())
                .min(f64::from(cfg.requests_per_minute.get()) / 60.0),
            latency_observer: None,
            unanswered: Arc::default(),
            billable: Arc::default(),
            unrecorded: Arc::default(),
        })
    }

    /// `host:port` of the API (for messages about it as a whole).
    pub fn api_addr(&self) -> String {
        addr_of(Some(&self.base))
    }

    /// The API calls on the wire and not yet answered (shared by every clone).
    pub fn unanswered(&self) -> Arc<Unanswered> {
        self.unanswered.clone()
    }

    /// `POST {base}/image/edit/async`: one HTTP attempt. Once the request may have reached
    /// Claid, a lost answer is [`ErrorClass::Ambiguous`]; a 429 is [`ClaidError::RateLimited`].
    pub async fn submit_once(&self, body: &serde_json::Value) -> Result<Accepted, ClaidError> {
        self.submit_in(self.turn().await, body).await
    }

    /// [`Client::submit_once`] in a [`Turn`] the caller took before it recorded its intent.
    pub async fn submit_in(
        &self,
        turn: Turn,
        body: &serde_json::Value,
    ) -> Result<Accepted, ClaidError> {
        let url = self.endpoint_url("image/edit/async")?;
        let build = || Ok(self.api.post(url.clone()).json(body));
        let answer = self.call_in(turn, Endpoint::Submit, build).await?;
        let (task, request_id) = expect_ok::<wire::AsyncTask>(Endpoint::Submit, answer)?;
        Ok(Accepted {
            task_id: task.id,
            result_url: self.poll_url(TaskKind::Async, task.id, &task.result_url),
            request_id,
        })
    }

    /// `GET` the task's `result_url` as Claid returned it when it is on the API's origin, else
    /// `{base}/image/edit/async/{task_id}` (see [`Client::poll_url`]): one HTTP attempt.
    pub async fn poll_once(&self, result_url: &str, task_id: u64) -> Result<Polled, ClaidError> {
        self.poll_in(self.turn().await, result_url, task_id).await
    }

    /// [`Client::poll_once`] in a [`Turn`] the caller took first: a poll that waited for the
    /// rate limiter can still be held back (a pause that refuses polls began meanwhile) and
    /// give its turn back unspent.
    pub async fn poll_in(
        &self,
        turn: Turn,
        result_url: &str,
        task_id: u64,
    ) -> Result<Polled, ClaidError> {
        let url = self.checked_poll_url(TaskKind::Async, task_id, result_url)?;
        let answer = self.get_poll(turn, url).await?;
        let status = answer.status.as_u16();
        let (task, request_id) = expect_ok::<wire::AsyncTask>(Endpoint::Poll, answer)?;
        if task.id != task_id {
            return Err(other_task(status, request_id));
        }
        Ok(Polled { task, request_id })
    }

    /// `POST {base}/image/edit/batch` with a list of image URLs: one HTTP attempt, classified
    /// as a submit (a lost answer is ambiguous: the batch may exist and be billed).
    pub async fn submit_batch_once(
        &self,
        body: &wire::BatchEditRequest,
    ) -> Result<BatchAccepted, ClaidError> {
        self.submit_batch_in(self.turn().await, body).await
    }

    /// [`Client::submit_batch_once`] in a [`Turn`] the caller took before it recorded its
    /// intent.
    pub async fn submit_batch_in(
        &self,
        turn: Turn,
        body: &wire::BatchEditRequest,
    ) -> Result<BatchAccepted, ClaidError> {
        let url = self.endpoint_url("image/edit/batch")?;
        let build = || Ok(self.api.post(url.clone()).json(body));
        let answer = self.call_in(turn, Endpoint::Submit, build).await?;
        let (task, request_id) = expect_ok::<wire::BatchTask>(Endpoint::Submit, answer)?;
        Ok(BatchAccepted {
            batch_id: task.id,
            result_url: self.poll_url(TaskKind::Batch, task.id, &task.result_url),
            request_id,
        })
    }

    /// `GET` a batch's `result_url` (on the API's origin, else rebuilt from its id, as
    /// [`Client::poll_once`]): one HTTP attempt.
    pub async fn poll_batch_once(
        &self,
        result_url: &str,
        batch_id: u64,
    ) -> Result<PolledBatch, ClaidError> {
        self.poll_batch_in(self.turn().await, result_url, batch_id)
            .await
    }

    /// [`Client::poll_batch_once`] in a [`Turn`] the caller took first (see
    /// [`Client::poll_in`]).
    pub async fn poll_batch_in(
        &self,
        turn: Turn,
        result_url: &str,
        batch_id: u64,
    ) -> Result<PolledBatch, ClaidError> {
        let url = self.checked_poll_url(TaskKind::Batch, batch_id, result_url)?;
        let answer = self.get_poll(turn, url).await?;
        let status = answer.status.as_u16();
        let (batch, request_id) = expect_ok::<wire::BatchTask>(Endpoint::Poll, answer)?;
        if batch.id != batch_id {
            return Err(other_task(status, request_id));
        }
        Ok(PolledBatch { batch, request_id })
    }

    /// `GET` a poll URL. A redirect to the API's own origin is followed, a few hops at most:
    /// a GET is safe to send again (unlike a submit), and a `result_url` under an older
    /// prefix (`/v1-beta1`) may redirect to the current one; pausing on it left billed
    /// results undelivered. A redirect elsewhere is refused as any redirect of the API.
    /// The first request goes in `turn`, a redirect's in a turn of its own.
    async fn get_poll(&self, turn: Turn, mut url: Url) -> Result<Answer, ClaidError> {
        let mut hops = 0;
        let mut turn = Some(turn);
        loop {
            let target = url.clone();
            let build = || Ok(self.api.get(target.clone()));
            let turn = match turn.take() {
                Some(turn) => turn,
                None => self.turn().await,
            };
            match self.call_in(turn, Endpoint::Poll, build).await {
                Err(ClaidError::Redirected {
                    ref location,
                    status,
                    ..
                }) if hops < MAX_POLL_REDIRECTS
                    && let Ok(next) = url.join(location)
                    && next.origin() == self.base.origin()
                    && next != url =>
                {
                    tracing::debug!(status, to = %Escaped::str(next.path()), "A poll was redirected on the API's origin; following it");
                    hops += 1;
                    url = next;
                }
                other => return other,
            }
        }
    }

    /// `POST {base}/image/edit/upload` (multipart `file` + `data`): one HTTP attempt;
    /// synchronous on Claid's side, so it may take long. `file_name` is sent with quotes,
    /// backslashes and control characters percent-encoded (RFC 7578 §4.2), never raw.
    pub async fn upload_once(
        &self,
        file_name: &str,
        bytes: Bytes,
        data: &serde_json::Value,
    ) -> Result<Uploaded, ClaidError> {
        self.upload_in(self.turn().await, file_name, bytes, data)
            .await
    }

    /// [`Client::upload_once`] in a [`Turn`] taken before the intent was recorded.
    pub async fn upload_in(
        &self,
        turn: Turn,
        file_name: &str,
        bytes: Bytes,
        data: &serde_json::Value,
    ) -> Result<Uploaded, ClaidError> {
        let url = self.endpoint_url("image/edit/upload")?;
        let data = data.to_string();
        let file_name = multipart_file_name(file_name);
        let mime = image::guess_format(&bytes)
            .map_or("application/octet-stream", |format| format.to_mime_type());
        let build = || {
            // The part says what it holds, as a browser's upload would (a missing type reads
            // as text/plain).
            let file = reqwest::multipart::Part::stream(bytes.clone())
                .file_name(file_name.clone())
                .mime_str(mime)
                .map_err(|_| ClaidError::Config {
                    about: "multipart mime",
                })?;
            let data_part = reqwest::multipart::Part::text(data.clone())
                .mime_str("application/json")
                .map_err(|_| ClaidError::Config {
                    about: "multipart mime",
                })?;
            let form = reqwest::multipart::Form::new()
                .part("file", file)
                .part("data", data_part);
            Ok(self
                .api
                .post(url.clone())
                .timeout(self.upload_timeout)
                .multipart(form))
        };
        let answer = self.call_in(turn, Endpoint::Upload, build).await?;
        let (response, request_id) = expect_ok::<wire::EditResponse>(Endpoint::Upload, answer)?;
        Ok(Uploaded {
            response,
            request_id,
        })
    }

    /// The URL [`Client::list_storages_once`] asks, credentials redacted, for messages.
    pub fn storages_url(&self) -> String {
        self.endpoint_url("storage/storages").map_or_else(
            |_| "(api.base_url)/storage/storages".to_owned(),
            |url| crate::text::redact_urls_in(url.as_str()).into_owned(),
        )
    }

    /// `GET {base}/storage/storages`: the storage connectors of the account (no pagination),
    /// one HTTP attempt, counted as a probe. Needs the key's `storage` scope.
    pub async fn list_storages_once(&self) -> Result<Vec<wire::StorageOut>, ClaidError> {
        let url = self.endpoint_url("storage/storages")?;
        let build = || Ok(self.api.get(url.clone()));
        let answer = self.call(Endpoint::Probe, build).await?;
        let (storages, _) = expect_ok::<Vec<wire::StorageOut>>(Endpoint::Probe, answer)?;
        Ok(storages)
    }

    /// A cheap authenticated call (`GET {base}/image/edit/async/0`): Ok when Claid answers
    /// and accepts the key (a 404 for the non-existent task is fine). One HTTP attempt.
    pub async fn probe(&self) -> Result<(), ClaidError> {
        let url = self.endpoint_url("image/edit/async/0")?;
        let build = || Ok(self.api.get(url.clone()));
        let answer = self.call(Endpoint::Probe, build).await?;
        match answer.status.as_u16() {
            200..=299 | 404 | 422 => Ok(()),
            _ => Err(status_error(Endpoint::Probe, &answer)),
        }
    }

    /// Downloads a result (`tmp_url`): one HTTP attempt, http(s) only, no API key, not rate
    /// limited, at most `max_download_bytes`, and exactly `Content-Length` bytes when that
    /// header is present.
    pub async fn download_once(&self, url: &str) -> Result<Bytes, ClaidError> {
        let url = download_url(url)?;
        self.fetch(&url).await
    }

    /// Reports every answered call's latency to `observer` (the metrics histogram).
    pub fn with_latency_observer(mut self, observer: LatencyObserver) -> Client {
        self.latency_observer = Some(observer);
        self
    }

    fn observe_latency(&self, endpoint: Endpoint, latency: Duration) {
        if let Some(observer) = &self.latency_observer {
            observer(endpoint, latency);
        }
    }

    /// After a 429: tells a long closure of the limiter's gate, as a call waiting for it would
    /// ([`Limiter::tell_if_long_closed`]).
    pub fn tell_if_long_closed(&self) {
        self.limiter.tell_if_long_closed();
    }

    /// Records a limiter wait of at least [`SIGNIFICANT_WAIT`] at `at`, as a call would.
    #[cfg(test)]
    pub(crate) fn note_pressure_at(&self, at: Instant) {
        self.with_stats(|s| {
            s.limiter_pressure += 1;
            s.last_pressure_at = Some(at);
        });
    }

    /// Takes `n` slots of the rate limiter, as `n` calls would.
    #[cfg(test)]
    pub(crate) async fn take_slots(&self, n: usize) {
        for _ in 0..n {
            self.limiter.acquire().await;
        }
    }

    /// When a call last waited at least [`SIGNIFICANT_WAIT`] in the rate limiter: the limit
    /// binds. (Spacing waits of microseconds under a very high limit do not count.)
    pub fn last_limiter_pressure(&self) -> Option<Instant> {
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last_pressure_at
    }

    /// The share (0 to 1) of the minute's quota the calls of the last minute took.
    pub fn minute_quota_used(&self) -> f64 {
        self.limiter.minute_used()
    }

    /// The requests per second the configured quotas allow over a minute and more: the
    /// smaller of `requests_per_second` and `requests_per_minute` / 60.
    pub fn sustained_rate(&self) -> f64 {
        self.sustained_rate
    }

    /// Requests a minute the limiter lets through now: the tighter of its two quotas, as the
    /// config sets them or lower when Claid announced less ([`Limiter::learn`]).
    pub fn requests_per_minute_in_force(&self) -> u64 {
        let (per_second, per_minute) = self.limiter.quotas();
        (per_minute as u64).min(per_second as u64 * 60)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ClientStats {
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Where a task is polled: the `result_url` Claid gave when it is an absolute URL on the
    /// API's origin (a path is taken on that origin), else the documented
    /// `{base}/image/edit/async/{id}` (or `…/batch/{id}`). `result_url` is optional in Claid's
    /// schema, and one on another host (a canonical `https://api.claid.ai/…` behind a proxy,
    /// `localhost` for `127.0.0.1`) would either send the key elsewhere or fail a billed task;
    /// the id alone is enough to find it.
    pub fn poll_url(&self, kind: TaskKind, id: u64, given: &str) -> String {
        let on_origin = if given.starts_with('/') && !given.starts_with("//") {
            self.base.join(given).ok()
        } else {
            Url::parse(given).ok()
        }
        .filter(|url| {
            url.origin() == self.base.origin() && matches!(url.scheme(), "http" | "https")
        });
        match on_origin {
            Some(url) => url.to_string(),
            None => {
                if !given.is_empty() {
                    tracing::debug!(
                        task_id = id,
                        result_url = %crate::text::Escaped::str(given),
                        "The task's result_url is not on the API's origin; polling it by its id"
                    );
                }
                format!(
                    "{}/image/edit/{}/{id}",
                    self.base.as_str().trim_end_matches('/'),
                    kind.path()
                )
            }
        }
    }

    /// [`Client::poll_url`] as a URL (a stored `result_url` of an older version is checked
    /// again: the key never goes off the API's origin).
    fn checked_poll_url(&self, kind: TaskKind, id: u64, given: &str) -> Result<Url, ClaidError> {
        Url::parse(&self.poll_url(kind, id, given)).map_err(|_| ClaidError::Config {
            about: "base_url does not combine with the poll path",
        })
    }

    fn endpoint_url(&self, path: &str) -> Result<Url, ClaidError> {
        let text = format!("{}/{path}", self.base.as_str().trim_end_matches('/'));
        Url::parse(&text).map_err(|_| ClaidError::Config {
            about: "base_url does not combine with the endpoint path",
        })
    }

    fn with_stats(&self, f: impl FnOnce(&mut ClientStats)) {
        f(&mut self.stats.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// One API call through the limiter: one HTTP attempt. A 429 closes the shared gate and
    /// comes back as [`ClaidError::RateLimited`]; any other answer is returned for the caller
    /// to classify. Transport failures are classified here.
    async fn call(
        &self,
        endpoint: Endpoint,
        build: impl Fn() -> Result<reqwest::RequestBuilder, ClaidError>,
    ) -> Result<Answer, ClaidError> {
        let turn = self.turn().await;
        self.call_in(turn, endpoint, build).await
    }

    /// The rate limiter's permission for one request: a submit takes it before its intent
    /// is recorded, so that a crash while it waits for the limiter (a minute's quota spent)
    /// leaves the job queued, not in doubt. A turn not used is one request of the budget
    /// left unspent.
    pub async fn turn(&self) -> Turn {
        Turn {
            slot: Some(self.limiter.acquire_slot().await),
            limiter: self.limiter.clone(),
        }
    }

    /// One request in `turn` (see [`Client::turn`]).
    async fn call_in(
        &self,
        mut turn: Turn,
        endpoint: Endpoint,
        build: impl Fn() -> Result<reqwest::RequestBuilder, ClaidError>,
    ) -> Result<Answer, ClaidError> {
        // The request goes in its turn's slot, however long the intent's flush took: every
        // submit waits for one flush, so the delays differ by the flushes' spread, which the
        // log's margin absorbs like network jitter (a rare stall beyond it costs a 429 and a
        // retry, never a bill). Taking a stale turn again would queue the job behind every
        // other waiting one while it is marked submitting: in doubt at a crash.
        let Some(slot) = turn.slot.take() else {
            return Err(ClaidError::Config {
                about: "a rate-limit turn spent twice",
            });
        };
        let (waited, sent_at) = (slot.waited, slot.at);
        if !waited.0.is_zero() {
            self.with_stats(|s| {
                s.limiter_waits += 1;
                s.limiter_wait_total += waited.0;
                if waited.0 >= SIGNIFICANT_WAIT {
                    s.limiter_pressure += 1;
                    s.last_pressure_at = Some(Instant::now());
                }
            });
        }
        let mut builder = build()?;
        if let Some(auth) = &self.auth {
            builder = builder.header(header::AUTHORIZATION, auth.clone());
        }
        let request = builder.build().map_err(|_| ClaidError::BadUrl {
            endpoint,
            about: "request could not be built for this url",
        })?;
        let method = request.method().clone();
        let started = Instant::now();
        // An upload is a synchronous edit: Claid answers it once the edit is done, which may
        // take minutes (`api.upload_timeout`), so its wait says nothing of an outage.
        let _on_the_wire = (endpoint != Endpoint::Upload).then(|| self.unanswered.sent());
        let _billable = endpoint.is_billable_post().then(|| {
            self.billable
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Billable(self.billable.clone())
        });
        let response = match self.api.execute(request).await {
            Ok(response) => response,
            Err(err) => {
                self.with_stats(|s| *s.transport_errors.entry(endpoint).or_default() += 1);
                let err = transport_error(endpoint, &err, None);
                tracing::debug!(
                    method = %method, endpoint = endpoint.as_str(),
                    latency_ms = started.elapsed().as_millis() as u64, error = %err,
                    "Claid call failed without a response"
                );
                return Err(err);
            }
        };
        // `on_the_wire` lives until the body is read too: an answer whose body stalls is no
        // answer.
        let status = response.status();
        let request_id = request_id_of(response.headers());
        self.observe_latency(endpoint, started.elapsed());
        self.observe_rate_headers(sent_at, response.headers(), status);
        self.with_stats(|s| {
            *s.responses.entry((endpoint, status.as_u16())).or_default() += 1;
            if status == StatusCode::TOO_MANY_REQUESTS {
                s.rate_limited += 1;
            }
        });
        tracing::debug!(
            method = %method, endpoint = endpoint.as_str(), status = status.as_u16(),
            request_id = %Escaped::str(request_id.as_deref().unwrap_or("-")),
            latency_ms = started.elapsed().as_millis() as u64,
            "Claid call answered"
        );
        if status == StatusCode::TOO_MANY_REQUESTS {
            // The gate is already closed by observe_rate_headers: every caller waits it out.
            return Err(ClaidError::RateLimited {
                endpoint,
                retry_after: reset_of(response.headers()),
                request_id,
            });
        }
        if status.is_redirection() {
            let location = header_str(response.headers(), "location")
                .map(|location| crate::text::redact_credentials(location).into_owned())
                .unwrap_or_else(|| "nowhere named (no Location header)".to_owned());
            // `303 See Other` to a POST says it was processed and its answer is elsewhere:
            // the task exists and may be billed. Held in doubt like a 2xx that cannot be read
            // (taken for "the API moved", the job stayed queued and the next run submitted it
            // again).
            if status == StatusCode::SEE_OTHER && endpoint.is_billable_post() {
                tracing::warn!(
                    endpoint = endpoint.as_str(),
                    location = %Escaped::str(&location),
                    "Claid answered 303 See Other to a billable request"
                );
                return Err(ClaidError::BadResponse {
                    endpoint,
                    status: status.as_u16(),
                    request_id,
                    about: "Claid answered 303 See Other: the request was processed (and may be billed) and its answer is elsewhere; held in doubt, not sent again (`replay --in-doubt` sends it again)",
                });
            }
            return Err(ClaidError::Redirected {
                endpoint,
                status: status.as_u16(),
                location: Escaped::str(&location).to_string(),
                request_id,
            });
        }
        match read_limited(response, MAX_BODY).await {
            Ok(body) => Ok(Answer {
                status,
                request_id,
                body,
            }),
            // A submit or upload answered 2xx was accepted (and may be billed) even when its
            // body then breaks off or stalls: it is held in doubt like a 2xx that cannot be
            // read, never sent again on its own (taken for a lost answer, it was resent and
            // billed up to five times).
            Err(_) if status.is_success() && endpoint.is_billable_post() => {
                Err(ClaidError::BadResponse {
                    endpoint,
                    status: status.as_u16(),
                    request_id,
                    about: "Claid accepted it, but its answer broke off before it was read whole; held in doubt, not sent again, since it may be billed (`replay --in-doubt` sends it again)",
                })
            }
            Err(err) => Err(transport_error(endpoint, &err, request_id)),
        }
    }

    /// Hands the answer's `RateLimit-*` headers to the shared limiter: a 429 or
    /// `RateLimit-Remaining <= 0` closes its gate, a `Remaining` below what its log has left
    /// caps it.
    fn observe_rate_headers(&self, sent_at: Instant, headers: &HeaderMap, status: StatusCode) {
        self.limiter.observe(
            sent_at,
            ServerWord {
                rate_limited: status == StatusCode::TOO_MANY_REQUESTS,
                remaining: parse_remaining(
                    header_str(headers, "ratelimit-remaining")
                        .or_else(|| header_str(headers, "x-ratelimit-remaining")),
                )
                .or_else(|| limiter::parse_combined(header_str(headers, "ratelimit")).0),
                reset: reset_header(headers),
            },
        );
        // The account's own quotas, when lower than the config's: used from now on.
        if let Some(policies) = header_str(headers, "ratelimit-policy")
            .or_else(|| header_str(headers, "ratelimit-limit"))
            && let Some(learned) = self.limiter.learn(policies)
        {
            match learned {
                limiter::Learned::Lowered(per_second, per_minute) => tracing::warn!(
                    per_second,
                    per_minute,
                    "Claid's rate limits for this key are lower than the daemon's: it keeps to Claid's from now on; lower api.requests_per_second / api.requests_per_minute to match"
                ),
                limiter::Learned::Raised(per_second, per_minute) => tracing::info!(
                    per_second,
                    per_minute,
                    "Claid has allowed this key more requests for a minute: the daemon follows, up to api.requests_per_second / api.requests_per_minute"
                ),
            }
        }
        // A server error that says when to come back (`Retry-After` on a 503): no call goes
        // before then, whoever makes it (capped as a 429's reset is).
        if status.is_server_error()
            && let Some(after) = limiter::parse_retry_after(header_str(headers, "retry-after"))
        {
            self.limiter.block_for(after);
        }
    }

    /// One download of `url` (checked by [`download_url`]).
    async fn fetch(&self, url: &Url) -> Result<Bytes, ClaidError> {
        let started = Instant::now();
        let response = match self.downloads.get(url.clone()).send().await {
            Ok(response) => response,
            Err(err) => {
                self.with_stats(|s| {
                    *s.transport_errors.entry(Endpoint::Download).or_default() += 1
                });
                return Err(transport_error(Endpoint::Download, &err, None));
            }
        };
        let status = response.status();
        let request_id = request_id_of(response.headers());
        self.observe_latency(Endpoint::Download, started.elapsed());
        self.with_stats(|s| {
            *s.responses
                .entry((Endpoint::Download, status.as_u16()))
                .or_default() += 1
        });
        tracing::debug!(
            method = "GET",
            endpoint = "download",
            status = status.as_u16(),
            request_id = %Escaped::str(request_id.as_deref().unwrap_or("-")),
            latency_ms = started.elapsed().as_millis() as u64,
            "Download answered"
        );
        match status.as_u16() {
            200..=299 => {}
            403 | 404 | 410 => {
                return Err(ClaidError::ResultGone {
                    status: status.as_u16(),
                    request_id,
                });
            }
            code => {
                return Err(ClaidError::DownloadStatus {
                    status: code,
                    request_id,
                });
            }
        }
        let limit = self.max_download_bytes;
        let expected = response.content_length();
        // Whether the body's end is told by its framing (chunked, decoded from a content
        // encoding, or HTTP/2's own), not by the connection's close: a body that ends so
        // before its image does came whole, as the host has it.
        let framed = response.version() >= reqwest::Version::HTTP_2
            || response
                .headers()
                .contains_key(reqwest::header::CONTENT_ENCODING)
            || response
                .headers()
                .get(reqwest::header::TRANSFER_ENCODING)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if expected.is_some_and(|len| len > limit) {
            return Err(ClaidError::TooLarge { limit, request_id });
        }
        let mut response = response;
        let mut buf =
            BytesMut::with_capacity(usize::try_from(expected.unwrap_or(0).min(limit)).unwrap_or(0));
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if buf.len() as u64 + chunk.len() as u64 > limit {
                        return Err(ClaidError::TooLarge { limit, request_id });
                    }
                    buf.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(err) => {
                    // The body broke off (announced length or chunked): a truncated result.
                    if !err.is_timeout() && (expected.is_some() || !buf.is_empty() || err.is_body())
                    {
                        return Err(ClaidError::Truncated {
                            expected,
                            received: buf.len() as u64,
                            request_id,
                            image_end: None,
                        });
                    }
                    return Err(transport_error(Endpoint::Download, &err, request_id));
                }
            }
        }
        // An empty body that ended cleanly is no image: a host that answered before it had
        // the file (a cache or CDN between), fetched again (`pipeline::job` waits it out a
        // few minutes).
        if buf.is_empty() {
            return Err(ClaidError::Truncated {
                expected,
                received: 0,
                request_id,
                image_end: Some(EMPTY_BODY),
            });
        }
        if let Some(expected) = expected {
            if (buf.len() as u64) < expected {
                return Err(ClaidError::Truncated {
                    expected: Some(expected),
                    received: buf.len() as u64,
                    request_id,
                    image_end: None,
                });
            }
        }
        // A body that ended cleanly but before its image did (no length was announced, or a
        // cache kept half a file under a length of its own): fetched again, never written.
        if let Some(why) = crate::output::check::cut_short(&buf) {
            return Err(ClaidError::Truncated {
                // Its whole length, when the framing says the body is whole; `None` only for
                // a body the connection's close ended (on the wire, that is a cut).
                expected: expected.or(framed.then_some(buf.len() as u64)),
                received: buf.len() as u64,
                request_id,
                image_end: Some(why),
            });
        }
        Ok(buf.freeze())
    }
}

/// Reads a whole body, refusing more than `limit` bytes (the excess is an error, as a reset).
async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Bytes, reqwest::Error> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = response.chunk().await? {
        if buf.len() + chunk.len() > limit {
            // Keep what fits: the JSON will not parse and the caller reports a bad response.
            let room = limit.saturating_sub(buf.len());
            buf.extend_from_slice(&chunk[..room.min(chunk.len())]);
            break;
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// A TLS failure told as one: rustls names what it received ("received corrupt message of
/// type InvalidContentType" when an `https://` URL reaches a server that speaks plain HTTP),
/// which says nothing of TLS to an operator.
fn tls_named(cause: String, url: Option<&reqwest::Url>) -> String {
    let https = url.is_some_and(|u| u.scheme() == "https");
    if https && cause.contains("InvalidContentType") {
        format!(
            "TLS handshake failed: the server does not answer in TLS (it may speak plain HTTP: is the URL meant to be http://?) ({cause})"
        )
    } else if https && is_tls_failure(&cause) && !cause.to_ascii_lowercase().contains("tls") {
        format!("TLS handshake failed: {cause}")
    } else {
        cause
    }
}

/// Whether `cause` (an error's innermost cause) is a failed TLS handshake as rustls words it;
/// an OS error (`ECONNRESET: connection reset by peer`) is none. [`is_tls_refusal`] tells
/// which of them no retry mends.
fn is_tls_failure(cause: &str) -> bool {
    !cause.starts_with('E')
        && [
            "certificate",
            "handshake",
            "received fatal alert",
            "corrupt message",
            "peer is incompatible",
        ]
        .iter()
        .any(|sign| cause.contains(sign))
}

/// Whether a connect failure is a TLS handshake that no retry mends: a server that does not
/// answer in TLS, a certificate the daemon cannot trust (unknown issuer, issued for another
/// name, a bad signature), or a server that refuses every handshake the daemon can offer (no
/// common protocol version). What may pass stays an outage, retried until
/// `api.unreachable_timeout`: an OS error, an end of file or a reset during the handshake (a
/// server restarting), any other fatal alert (a `HandshakeFailure` from one backend of a load
/// balancer while certificates rotate), and a certificate expired or not valid yet (this
/// machine's clock may be wrong at boot, until it is set).
fn tls_refusal(cause: &str, url: Option<&reqwest::Url>) -> bool {
    url.is_some_and(|u| u.scheme() == "https") && is_tls_refusal(cause)
}

/// Whether `cause` (an error's text, or its innermost cause) tells of a TLS handshake that no
/// retry mends, as rustls words it: see [`tls_refusal`]. Also for a bucket's endpoint.
pub fn is_tls_refusal(cause: &str) -> bool {
    let about_time = ["xpired", "NotValidYet", "not valid yet"]
        .iter()
        .any(|sign| cause.contains(sign));
    is_tls_failure(cause)
        && !about_time
        && [
            "InvalidContentType",
            "corrupt message",
            "invalid peer certificate",
            "received fatal alert: ProtocolVersion",
            "received fatal alert: InsufficientSecurity",
            "peer is incompatible",
            "peer sent no certificates",
        ]
        .iter()
        .any(|sign| cause.contains(sign))
}

/// Maps a reqwest failure to a class-bearing error that names the host and the OS cause:
/// connect errors mean nothing was sent.
fn transport_error(
    endpoint: Endpoint,
    err: &reqwest::Error,
    request_id: Option<String>,
) -> ClaidError {
    let addr = match err.url().and_then(proxy_of) {
        Some(proxy) => format!("{} ({proxy})", addr_of(err.url())),
        None => addr_of(err.url()),
    };
    let cause = || os_error::root_cause(err).unwrap_or_else(|| text::escape(&err.to_string()));
    if err.is_connect() {
        let cause = cause();
        let refused = tls_refusal(&cause, err.url());
        let cause = tls_named(cause, err.url());
        if refused {
            ClaidError::Tls {
                endpoint,
                addr,
                cause,
            }
        } else {
            ClaidError::Connect {
                endpoint,
                addr,
                cause,
            }
        }
    } else if err.is_timeout() {
        ClaidError::Timeout {
            endpoint,
            addr,
            request_id,
        }
    } else if err.is_redirect() {
        ClaidError::RedirectLoop { endpoint, addr }
    } else if err.is_builder() {
        ClaidError::BadUrl {
            endpoint,
            about: "request could not be built for this url",
        }
    } else {
        ClaidError::Network {
            endpoint,
            addr,
            request_id,
            cause: cause(),
        }
    }
}

/// The proxy a request to `url` goes through, as the client reads the environment
/// (`HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY`, either case, unless `NO_PROXY` names the host):
/// `VARIABLE is set to host:port and NO_PROXY does not name HOST`, without any credentials
/// in it. Told with connection
/// errors, so an operator looks at the proxy too, not only at the API behind it.
fn proxy_of(url: &Url) -> Option<String> {
    let var = |name: &str| {
        [name.to_owned(), name.to_lowercase()]
            .into_iter()
            .find_map(|n| {
                std::env::var(&n)
                    .ok()
                    .filter(|v| !v.trim().is_empty())
                    .map(|v| (n, v))
            })
    };
    let host = url.host_str()?.to_ascii_lowercase();
    if let Some((_, no_proxy)) = var("NO_PROXY") {
        let skipped = no_proxy.split(',').map(str::trim).any(|entry| {
            let entry = entry.trim_start_matches('.').to_ascii_lowercase();
            entry == "*"
                || (!entry.is_empty() && (host == entry || host.ends_with(&format!(".{entry}"))))
        });
        if skipped {
            return None;
        }
    }
    let scheme_var = if url.scheme() == "https" {
        "HTTPS_PROXY"
    } else {
        "HTTP_PROXY"
    };
    let (name, value) = var(scheme_var).or_else(|| var("ALL_PROXY"))?;
    // A proxy written without a scheme (`127.0.0.1:3128`) is an http:// one, as for curl.
    let shown = Url::parse(&value)
        .ok()
        .filter(|proxy| proxy.host_str().is_some())
        .or_else(|| Url::parse(&format!("http://{value}")).ok())
        .and_then(|proxy| {
            let host = proxy.host_str()?.to_owned();
            Some(match proxy.port_or_known_default() {
                Some(port) => format!("{host}:{port}"),
                None => host,
            })
        })
        .unwrap_or_else(|| "(unreadable)".to_owned());
    Some(format!(
        "{name} is set to {shown} and NO_PROXY does not name {host}"
    ))
}

/// `host:port` of a request URL, for messages (`127.0.0.1:9`, `api.claid.ai:443`).
fn addr_of(url: Option<&Url>) -> String {
    match url.and_then(|u| Some((u.host_str()?, u.port_or_known_default()))) {
        Some((host, Some(port))) => format!("{host}:{port}"),
        Some((host, None)) => host.to_owned(),
        None => "the server".to_owned(),
    }
}

/// A download URL, checked: http(s) with a host.
fn download_url(url: &str) -> Result<Url, ClaidError> {
    let url = Url::parse(url).map_err(|_| ClaidError::BadUrl {
        endpoint: Endpoint::Download,
        about: "not a url",
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(ClaidError::BadUrl {
            endpoint: Endpoint::Download,
            about: "only http(s) urls are downloaded",
        });
    }
    Ok(url)
}

/// A local file name as the multipart `filename=` parameter: `"`, `\`, CR, LF and every
/// other control or line-breaking character ([`text::is_unsafe_char`]) percent-encoded as
/// UTF-8 bytes, the way browsers encode form file names (RFC 7578 §4.2 allows
/// percent-encoding). reqwest would otherwise send a newline raw. An empty name is `image`.
fn multipart_file_name(name: &str) -> String {
    if name.is_empty() {
        return "image".to_owned();
    }
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c == '"' || c == '\\' || text::is_unsafe_char(c) {
            let mut utf8 = [0u8; 4];
            for byte in c.encode_utf8(&mut utf8).bytes() {
                out.push_str(&format!("%{byte:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A 2xx answer parsed as `{"data": T}`, or the classified error for anything else.
fn expect_ok<T: serde::de::DeserializeOwned>(
    endpoint: Endpoint,
    answer: Answer,
) -> Result<(T, Option<String>), ClaidError> {
    if !answer.status.is_success() {
        return Err(status_error(endpoint, &answer));
    }
    match serde_json::from_slice::<wire::Envelope<T>>(&answer.body) {
        Ok(envelope) => Ok((envelope.data, answer.request_id)),
        Err(err) => Err({
            // What was wrong with it (a field missing, an HTML page from a proxy), for the
            // operator to tell a gateway's page from a change of Claid's answers: the error
            // alone ("not the expected json") said neither. Its start, URLs redacted (a
            // result's signed URL is a credential for a day).
            let start = String::from_utf8_lossy(&answer.body[..answer.body.len().min(160)]);
            tracing::warn!(
                endpoint = %endpoint,
                status = answer.status.as_u16(),
                parse_error = %err,
                body_start = %text::Escaped::str(&text::redact_urls_in(&start)),
                "Claid's answer could not be read"
            );
            ClaidError::BadResponse {
                endpoint,
                status: answer.status.as_u16(),
                request_id: answer.request_id,
                about: if endpoint.is_billable_post() {
                    "Claid accepted it, but its answer is not the expected json; held in doubt, not sent again, since it may be billed (`replay --in-doubt` sends it again)"
                } else {
                    "body is not the expected json"
                },
            }
        }),
    }
}

/// A poll answered with another task than the one asked for (a cache or a proxy mixing
/// answers up): its result would be some other image, so it is never taken for this one.
fn other_task(status: u16, request_id: Option<String>) -> ClaidError {
    ClaidError::BadResponse {
        endpoint: Endpoint::Poll,
        status,
        request_id,
        about: "the answer is about another task than the one asked for; its result is not taken",
    }
}

/// Whether `body` is an error document of Claid's own: a JSON object with `error_code`, at its
/// top or under `detail`. A framework's `{"detail": "Not Found"}` or a problem document
/// from a gateway is not (an unknown route while something in front of Claid deploys).
fn claids_envelope(body: &[u8]) -> bool {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    value.get("error_code").is_some()
        || value
            .get("detail")
            .is_some_and(|detail| detail.get("error_code").is_some())
}

/// Classifies a non-2xx, non-429 answer.
fn status_error(endpoint: Endpoint, answer: &Answer) -> ClaidError {
    let status = answer.status.as_u16();
    let request_id = answer.request_id.clone();
    let parsed = wire::ErrorBody::parse(&answer.body);
    let fallback_message = || {
        let text = String::from_utf8_lossy(&answer.body[..answer.body.len().min(4096)]);
        let text = text.trim();
        if text.is_empty() {
            answer
                .status
                .canonical_reason()
                .unwrap_or("no message")
                .to_owned()
        } else {
            text.chars().take(500).collect()
        }
    };
    match status {
        401..=403 => {
            let (error_code, error_message) = match parsed {
                Some(body) => (body.error_code, body.error_message),
                None => (String::new(), fallback_message()),
            };
            ClaidError::Account {
                endpoint,
                status,
                request_id,
                error_code,
                error_message,
            }
        }
        408 | 425 | 500..=599 => ClaidError::Server {
            endpoint,
            status,
            request_id,
            message: parsed.map(|b| b.error_message),
        },
        400..=499 => {
            let documented = claids_envelope(&answer.body);
            let body = parsed.unwrap_or_else(|| wire::ErrorBody {
                error_message: fallback_message(),
                ..wire::ErrorBody::default()
            });
            ClaidError::Rejected {
                endpoint,
                status,
                request_id,
                error_code: body.error_code,
                error_type: body.error_type,
                error_message: body.error_message,
                error_details: body.error_details,
                documented,
            }
        }
        _ => ClaidError::BadResponse {
            endpoint,
            status,
            request_id,
            about: "unexpected status",
        },
    }
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn request_id_of(headers: &HeaderMap) -> Option<String> {
    header_str(headers, "x-request-id")
        .map(str::trim)
        .filter(|id| !id.is_empty() && id.len() <= 200)
        .map(str::to_owned)
}

/// How long a 429 is waited out: `RateLimit-Reset` (Claid), else `Retry-After`, else
/// [`DEFAULT_RESET`]; never less than [`DEFAULT_RESET`] (a reset of `0`, told in whole seconds,
/// or a date already past, had every 429 sent again at once, dozens a second).
fn reset_of(headers: &HeaderMap) -> Duration {
    reset_header(headers)
        .unwrap_or(DEFAULT_RESET)
        .max(DEFAULT_RESET)
}

/// `RateLimit-Reset` (Claid: seconds, or a Unix time), else `Retry-After` (seconds or an HTTP
/// date), else the older `X-RateLimit-Reset` (as `RateLimit-Reset`, which a gateway in front of
/// Claid may send instead), else the reset of the IETF drafts' combined `RateLimit` field;
/// `None` when none is usable.
fn reset_header(headers: &HeaderMap) -> Option<Duration> {
    parse_reset(header_str(headers, "ratelimit-reset"))
        .or_else(|| limiter::parse_retry_after(header_str(headers, "retry-after")))
        .or_else(|| parse_reset(header_str(headers, "x-ratelimit-reset")))
        .or_else(|| limiter::parse_combined(header_str(headers, "ratelimit")).1)
}

#[cfg(test)]
mod tests {
    /// A TLS failure is named as one; an OS error on an https URL, or anything on http, is
    /// left as it is.
    #[test]
    fn a_tls_failure_is_named_and_an_os_error_is_not() {
        let https = reqwest::Url::parse("https://api.claid.ai/v1").ok();
        let http = reqwest::Url::parse("http://api.claid.ai/v1").ok();
        assert!(
            tls_named(
                "received corrupt message of type InvalidContentType".into(),
                https.as_ref()
            )
            .starts_with("TLS handshake failed: the server does not answer in TLS")
        );
        assert!(
            tls_named(
                "invalid peer certificate: UnknownIssuer".into(),
                https.as_ref()
            )
            .starts_with("TLS handshake failed: invalid peer certificate")
        );
        for cause in [
            "ECONNRESET: connection reset by peer",
            "ECONNREFUSED: connection refused",
        ] {
            assert_eq!(tls_named(cause.into(), https.as_ref()), cause);
        }
        let plain = "received corrupt message of type InvalidContentType";
        assert_eq!(tls_named(plain.into(), http.as_ref()), plain);
    }

    /// A handshake no retry mends pauses submitting (so `run --once` ends at once); one that
    /// may pass (an end of file, a reset, the server's internal error) stays an outage, and a
    /// result host's is asked again on the download's budget.
    #[test]
    fn a_tls_refusal_pauses_and_a_passing_handshake_failure_is_an_outage() {
        let https = reqwest::Url::parse("https://api.claid.ai/v1").ok();
        let http = reqwest::Url::parse("http://api.claid.ai/v1").ok();
        for cause in [
            "received corrupt message of type InvalidContentType",
            "invalid peer certificate: UnknownIssuer",
            "invalid peer certificate: certificate not valid for name \"api.claid.ai\"; certificate is only valid for example.com",
            "received fatal alert: ProtocolVersion",
            "peer is incompatible: Tls12NotOffered",
        ] {
            assert!(tls_refusal(cause, https.as_ref()), "{cause}");
            assert!(!tls_refusal(cause, http.as_ref()), "{cause} on http");
        }
        for cause in [
            "tls handshake eof",
            "ECONNRESET: connection reset by peer",
            "received fatal alert: InternalError",
            "received fatal alert: HandshakeFailure",
            "invalid peer certificate: Expired",
            "invalid peer certificate: certificate expired: verification time 1800000000 (UNIX), but certificate is not valid after 1700000000 (100000000 seconds ago)",
            "invalid peer certificate: certificate not valid yet: verification time 1 (UNIX), but certificate is not valid before 1700000000 (1699999999 seconds in future)",
            "invalid peer certificate: NotValidYet",
        ] {
            assert!(!tls_refusal(cause, https.as_ref()), "{cause}");
        }
        let refused = |endpoint| ClaidError::Tls {
            endpoint,
            addr: "api.claid.ai:443".to_owned(),
            cause: "TLS handshake failed: invalid peer certificate: UnknownIssuer".to_owned(),
        };
        for endpoint in [Endpoint::Submit, Endpoint::Upload, Endpoint::Poll] {
            assert_eq!(refused(endpoint).class(), ErrorClass::Systemic);
        }
        assert_eq!(refused(Endpoint::Download).class(), ErrorClass::Transient);
        assert!(refused(Endpoint::Download).is_unreachable());
        assert!(!refused(Endpoint::Submit).is_unreachable());
    }

    use super::*;

    /// A 429 is waited out at least a second, whatever its headers say (a reset of `0`, a
    /// `Retry-After: 0`, a date already past: it was sent again at once, dozens a second), and
    /// the IETF drafts' combined `RateLimit` field is read when the split fields are not sent.
    #[test]
    fn a_429_is_waited_out_at_least_a_second_and_the_combined_field_is_read() {
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, value.parse().expect("value"));
            }
            map
        };
        let past = httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(5));
        for pairs in [
            vec![("retry-after", "0")],
            vec![("ratelimit-reset", "0"), ("ratelimit-remaining", "-1")],
            vec![("retry-after", past.as_str())],
            vec![],
        ] {
            assert_eq!(
                reset_of(&headers(&pairs)),
                Duration::from_secs(1),
                "{pairs:?}"
            );
        }
        assert_eq!(
            reset_of(&headers(&[("ratelimit", "limit=4, remaining=0, reset=20")])),
            Duration::from_secs(20)
        );
        assert_eq!(
            reset_of(&headers(&[
                ("ratelimit", "\"default\";r=0;t=20"),
                ("ratelimit-policy", "\"default\";q=4;w=1")
            ])),
            Duration::from_secs(20)
        );
        assert_eq!(
            reset_of(&headers(&[
                ("ratelimit-reset", "3"),
                ("ratelimit", "limit=4, remaining=0, reset=20")
            ])),
            Duration::from_secs(3),
            "the split field first"
        );
    }

    /// Only Claid's own error document says the task is unknown: a framework's or a
    /// gateway's 404 body (taken for Claid's, a deploy's 404 lost billed tasks) is not.
    #[test]
    fn only_claids_own_envelope_is_taken_for_its_word() {
        assert!(claids_envelope(
            br#"{"error_code":"1404","error_type":"general","error_message":"Batch image edit pipeline not found."}"#
        ));
        assert!(claids_envelope(
            br#"{"detail":{"error_code":"1404","error_message":"x"}}"#
        ));
        assert!(!claids_envelope(br#"{"detail":"Not Found"}"#));
        assert!(!claids_envelope(
            br#"{"type":"about:blank","title":"Not Found","status":404}"#
        ));
        assert!(!claids_envelope(
            b"<html><body><h1>404 Not Found</h1>nginx</body></html>"
        ));
        assert!(!claids_envelope(b""));
    }

    /// `result_url` is optional in Claid's schema, and one on another origin must neither get
    /// the key nor fail a billed task: both are polled by id on the API's origin; one on the
    /// origin (absolute, or a path) is kept as Claid gave it.
    #[test]
    fn poll_urls_stay_on_the_api_origin_and_fall_back_to_the_id() {
        let client = Client::new(ClientConfig {
            base_url: "http://127.0.0.1:9/v1".into(),
            api_key: "k".into(),
            requests_per_second: NonZeroU32::new(4).unwrap(),
            requests_per_minute: NonZeroU32::new(120).unwrap(),
            request_timeout: Duration::from_secs(1),
            upload_timeout: Duration::from_secs(1),
            max_download_bytes: 1,
        })
        .expect("client");
        let url = |kind, given| client.poll_url(kind, 7, given);
        assert_eq!(
            url(TaskKind::Async, ""),
            "http://127.0.0.1:9/v1/image/edit/async/7"
        );
        assert_eq!(
            url(TaskKind::Batch, ""),
            "http://127.0.0.1:9/v1/image/edit/batch/7"
        );
        for foreign in [
            "https://api.claid.ai/v1-beta1/image/edit/async/7",
            "http://localhost:9/v1/image/edit/async/7",
            "https://127.0.0.1:9/v1/image/edit/async/7",
            "//evil.example/v1/image/edit/async/7",
            "not a url",
        ] {
            assert_eq!(
                url(TaskKind::Async, foreign),
                "http://127.0.0.1:9/v1/image/edit/async/7",
                "{foreign}"
            );
        }
        assert_eq!(
            url(
                TaskKind::Async,
                "http://127.0.0.1:9/v1/image/edit/async/7?x=1"
            ),
            "http://127.0.0.1:9/v1/image/edit/async/7?x=1"
        );
        assert_eq!(
            url(TaskKind::Async, "/v1/image/edit/async/8"),
            "http://127.0.0.1:9/v1/image/edit/async/8"
        );
    }

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            request_id: Some("rid".into()),
            body: Bytes::copy_from_slice(body.as_bytes()),
        }
    }

    /// The status table: (endpoint, status) → class and code.
    #[test]
    fn status_classification_table() {
        let envelope = r#"{"error_code":"9000","error_type":"validation","error_message":"bad."}"#;
        let check = |endpoint: Endpoint, status: u16, class: ErrorClass, code: &str| {
            let err = status_error(endpoint, &answer(status, envelope));
            assert_eq!(err.class(), class, "{endpoint} {status}");
            assert_eq!(err.code(), code, "{endpoint} {status}");
            assert_eq!(err.request_id(), Some("rid"));
        };
        use ErrorClass::*;
        for endpoint in [Endpoint::Submit, Endpoint::Poll, Endpoint::Upload] {
            check(endpoint, 400, Job, "claid-bad-request");
            check(endpoint, 401, Systemic, "claid-unauthorized");
            check(endpoint, 402, Systemic, "claid-out-of-credits");
            check(endpoint, 403, Systemic, "claid-forbidden");
            // On an edit endpoint, a 404 says the endpoint is missing (`api.base_url`).
            let not_found = if endpoint == Endpoint::Poll {
                Job
            } else {
                Systemic
            };
            check(endpoint, 404, not_found, "claid-not-found");
            check(endpoint, 409, Job, "claid-conflict");
            check(endpoint, 413, Job, "claid-too-large");
            check(endpoint, 415, Job, "claid-unsupported-media");
            check(endpoint, 422, Job, "claid-invalid-request");
            check(endpoint, 418, Job, "claid-rejected");
            check(endpoint, 408, Transient, "server-error");
            check(endpoint, 500, Transient, "server-error");
            check(endpoint, 503, Transient, "server-error");
            check(endpoint, 304, Transient, "bad-response");
        }
        check(Endpoint::Submit, 502, Ambiguous, "server-error");
        check(Endpoint::Submit, 504, Ambiguous, "server-error");
        check(Endpoint::Upload, 504, Ambiguous, "server-error");
        check(Endpoint::Poll, 502, Transient, "server-error");
        check(Endpoint::Poll, 504, Transient, "server-error");
        // 501 Not Implemented to a submit or upload: no such endpoint, like a 405.
        check(Endpoint::Submit, 501, Systemic, "server-error");
        check(Endpoint::Upload, 501, Systemic, "server-error");
        check(Endpoint::Poll, 501, Transient, "server-error");
    }

    /// A 2xx to a submit or upload created a task (or made the edit): an answer that cannot
    /// be read is in doubt, marked as accepted so that it is held, never sent again.
    #[test]
    fn unparseable_success_of_a_billable_post_is_never_sent_again() {
        for (endpoint, class) in [
            (Endpoint::Submit, ErrorClass::Ambiguous),
            (Endpoint::Upload, ErrorClass::Ambiguous),
            (Endpoint::Poll, ErrorClass::Transient),
        ] {
            let err = expect_ok::<wire::AsyncTask>(endpoint, answer(200, "{}")).unwrap_err();
            assert_eq!(err.class(), class, "{endpoint}");
            assert_eq!(
                err.accepted_unread(),
                endpoint != Endpoint::Poll,
                "{endpoint}"
            );
            assert_eq!(err.code(), "bad-response");
        }
    }

    #[test]
    fn error_without_envelope_keeps_the_text() {
        let err = status_error(Endpoint::Submit, &answer(400, "  input not fetchable \n"));
        assert_eq!(err.claid_message(), Some("input not fetchable"));
        let err = status_error(Endpoint::Submit, &answer(400, ""));
        assert_eq!(err.claid_message(), Some("Bad Request"));
    }

    #[test]
    fn multipart_file_names_never_carry_quotes_backslashes_or_line_breaks() {
        let check = |name: &str, expect: &str| assert_eq!(multipart_file_name(name), expect);
        check("shoe.png", "shoe.png");
        check("a\nb.png", "a%0Ab.png");
        check("a\r\nContent-Type: x.png", "a%0D%0AContent-Type: x.png");
        check("say \"hi\".png", "say %22hi%22.png");
        check("back\\slash.png", "back%5Cslash.png");
        check("esc\x1b.png", "esc%1B.png");
        check("ls\u{2028}.png", "ls%E2%80%A8.png");
        check("Ünïcödé ✓.png", "Ünïcödé ✓.png");
        check("", "image");
    }

    /// A connection the machine had no descriptor for is told apart from a host away.
    #[test]
    fn out_of_descriptors_is_the_machines_not_the_hosts() {
        let connect = |cause: &str| ClaidError::Connect {
            endpoint: Endpoint::Download,
            addr: "127.0.0.1:9".to_owned(),
            cause: cause.to_owned(),
        };
        assert!(connect("EMFILE: too many open files").out_of_descriptors());
        assert!(connect("ENFILE: too many open files in system").out_of_descriptors());
        assert!(!connect("ECONNREFUSED: connection refused").out_of_descriptors());
    }

    #[test]
    fn addresses_name_host_and_port() {
        let url = |s: &str| Url::parse(s).unwrap();
        assert_eq!(addr_of(Some(&url("http://127.0.0.1:9/v1"))), "127.0.0.1:9");
        assert_eq!(
            addr_of(Some(&url("https://api.claid.ai/v1"))),
            "api.claid.ai:443"
        );
        assert_eq!(addr_of(Some(&url("http://[::1]:8080/"))), "[::1]:8080");
        assert_eq!(addr_of(None), "the server");
    }

    #[test]
    fn reset_falls_back_to_retry_after_then_one_second() {
        let mut headers = HeaderMap::new();
        assert_eq!(reset_of(&headers), DEFAULT_RESET);
        headers.insert("x-ratelimit-reset", HeaderValue::from_static("7"));
        assert_eq!(reset_of(&headers), Duration::from_secs(7));
        headers.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(reset_of(&headers), Duration::from_secs(3));
        headers.insert("ratelimit-reset", HeaderValue::from_static("2"));
        assert_eq!(reset_of(&headers), Duration::from_secs(2));
    }
}
