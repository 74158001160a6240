//! Emulator scenarios: how the emulated Claid behaves (latency, faults, limits, inputs, batches,
//! webhooks), as a builder for tests and as clap flags (`ScenarioArgs`) for
//! `claid-hotfolder emulator`.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use rand::Rng;

use crate::emulator::limits::RateWindow;
use crate::emulator::storage::StorageConnector;
use crate::emulator::storage_file;

/// How long an async task takes from submit to DONE/ERROR.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Latency {
    /// Always the same.
    Fixed(Duration),
    /// Uniform between `min` and `max` (inclusive).
    Uniform { min: Duration, max: Duration },
    /// Log-normal: `median * exp(sigma * N(0,1))`, capped at ten minutes.
    LogNormal { median: Duration, sigma: f64 },
}

/// Upper bound for any drawn latency, so a wild sigma cannot stall a test for hours.
const MAX_LATENCY: Duration = Duration::from_secs(600);

impl Latency {
    /// Draws one latency from the distribution.
    pub fn sample(&self, rng: &mut impl Rng) -> Duration {
        match *self {
            Latency::Fixed(d) => d,
            Latency::Uniform { min, max } => {
                let (lo, hi) = if min <= max { (min, max) } else { (max, min) };
                let span = (hi - lo).as_secs_f64();
                lo + Duration::from_secs_f64(span * rng.random::<f64>())
            }
            Latency::LogNormal { median, sigma } => {
                // Box-Muller: u1 in (0, 1] keeps ln finite.
                let u1 = 1.0 - rng.random::<f64>();
                let u2 = rng.random::<f64>();
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                let secs = median.as_secs_f64() * (sigma * z).exp();
                if secs.is_finite() && secs >= 0.0 {
                    Duration::from_secs_f64(secs.min(MAX_LATENCY.as_secs_f64()))
                } else {
                    median
                }
            }
        }
    }
}

/// Parse errors of the `--latency` flag.
#[derive(Debug, thiserror::Error)]
pub enum LatencyParseError {
    #[error("latency must look like fixed:200ms, uniform:100ms..2s or lognormal:500ms,0.6")]
    Shape,
    #[error("bad duration {0:?}")]
    Duration(String),
    #[error("bad sigma {0:?}")]
    Sigma(String),
}

fn parse_duration(text: &str) -> Result<Duration, LatencyParseError> {
    humantime::parse_duration(text.trim()).map_err(|_| LatencyParseError::Duration(text.to_owned()))
}

impl FromStr for Latency {
    type Err = LatencyParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, rest) = s.split_once(':').unwrap_or(("fixed", s));
        match kind.trim() {
            "fixed" => Ok(Latency::Fixed(parse_duration(rest)?)),
            "uniform" => {
                let (a, b) = rest.split_once("..").ok_or(LatencyParseError::Shape)?;
                Ok(Latency::Uniform {
                    min: parse_duration(a)?,
                    max: parse_duration(b)?,
                })
            }
            "lognormal" => {
                let (m, s) = rest.split_once(',').ok_or(LatencyParseError::Shape)?;
                let sigma: f64 = s
                    .trim()
                    .parse()
                    .map_err(|_| LatencyParseError::Sigma(s.to_owned()))?;
                if !sigma.is_finite() || sigma < 0.0 {
                    return Err(LatencyParseError::Sigma(s.to_owned()));
                }
                Ok(Latency::LogNormal {
                    median: parse_duration(m)?,
                    sigma,
                })
            }
            _ => Err(LatencyParseError::Shape),
        }
    }
}

/// Share of injected 5xx answers per endpoint (each in `0.0..=1.0`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FaultShares {
    /// `POST …/image/edit/async`: the 5xx comes before a task is created.
    pub submit: f64,
    /// `GET …/image/edit/async/{id}`.
    pub poll: f64,
    /// `GET /_emulator/results/{token}` (tmp_url downloads).
    pub download: f64,
    /// `POST …/image/edit/upload`.
    pub upload: f64,
    /// `POST …/image/edit` (sync).
    pub sync: f64,
}

/// How the emulator gives a task's `result_url` (`--result-url`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ResultUrlForm {
    /// On the host and prefix the request came to (what Claid documents in its examples).
    #[default]
    Local,
    /// Left out (the schema does not require it).
    Omitted,
    /// On Claid's canonical host, not the one the request came to (a proxy or gateway in
    /// front of Claid): a client must not send its key there.
    Foreign,
    /// On the host the request came to, at an address that answers `301` to the current one
    /// (as a `result_url` under an older prefix may): a poll follows it on the same origin.
    Moved,
}

impl ResultUrlForm {
    /// The `result_url` of task `id` of `kind` (`async` or `batch`) reached at `host` + `prefix`.
    pub fn url(self, host: &str, prefix: &str, kind: &str, id: u64) -> String {
        match self {
            ResultUrlForm::Local => format!("http://{host}{prefix}/image/edit/{kind}/{id}"),
            ResultUrlForm::Omitted => String::new(),
            ResultUrlForm::Foreign => {
                format!("https://api.claid.ai{prefix}/image/edit/{kind}/{id}")
            }
            ResultUrlForm::Moved => {
                format!("http://{host}/_emulator/moved{prefix}/image/edit/{kind}/{id}")
            }
        }
    }
}

/// Everything that shapes the emulator's behaviour. `Default` is a well-behaved Claid: no
/// limits, no faults, 20 ms fixed latency, 24 h tmp_url lifetime, any non-empty API key.
/// `Debug` never shows the API key.
#[derive(Clone)]
pub struct Scenario {
    /// The accepted Bearer key; `None` accepts any non-empty key.
    pub api_key: Option<String>,
    /// Processing time of async tasks (submit → DONE/ERROR).
    pub latency: Latency,
    /// Seed of the one RNG behind every random decision; `None` seeds from the OS.
    pub seed: Option<u64>,
    /// The id of the first task or batch (then counted up, as Claid numbers them). 1 by
    /// default; the embedded and the standalone emulator start from the wall clock, so that a
    /// restarted emulator never names a task the daemon's store has from an earlier run.
    pub first_task_id: u64,
    /// Share of async tasks that end in ERROR although their input is fine.
    pub error_share: f64,
    /// Share of injected 5xx per endpoint.
    pub fault_5xx: FaultShares,
    /// Share of async submits whose task is created but whose connection is closed without
    /// any response (the client cannot know the task id: an "in doubt" submit).
    pub drop_share: f64,
    /// The first this many submits' answers (async or batch) are dropped after their task
    /// was made.
    pub drop_first: u32,
    /// Share of async and batch submits whose task is created and answered 200 with a body
    /// that is no task (a proxy's page): accepted, but its id cannot be read.
    pub garbled_share: f64,
    /// Requests allowed per one-second window (submits, polls, sync edits, uploads); `None` = no limit.
    pub rps: Option<u32>,
    /// Requests allowed per one-minute window; `None` = no limit.
    pub rpm: Option<u32>,
    /// How long a `tmp_url` stays downloadable.
    pub tmp_url_ttl: Duration,
    /// Inputs whose name contains one of these substrings end in ERROR (async) or 400 (sync).
    pub corrupt_patterns: Vec<String>,
    /// Root of `storage://NAME/path` inputs (`<root>/NAME/path`) for names no connector has;
    /// `None` = only connectors and `storage://demo`.
    pub storage_root: Option<PathBuf>,
    /// Storage connectors that exist from the start (ids 1, 2, … in this order).
    pub storages: Vec<StorageConnector>,
    /// S3 endpoint of connectors created through `POST …/storage/storages` (Claid's `StorageIn`
    /// has none); `None` = Amazon S3 itself.
    pub storage_endpoint: Option<String>,
    /// Signing region of those connectors; `None` = `us-east-1`.
    pub storage_region: Option<String>,
    /// Folder served at `/_static/...` so tests can offer `http://` inputs.
    pub static_dir: Option<PathBuf>,
    /// Start with every billable request answering 402.
    pub credits_exhausted: bool,
    /// Start with every API request answering 403.
    pub forbidden: bool,
    /// Share of polls held for `poll_delay` before they are answered (longer than the client's
    /// request timeout, the poll times out on the client side).
    pub poll_delay_share: f64,
    /// How long a delayed poll is held.
    pub poll_delay: Duration,
    /// Share of tmp_url downloads that announce the full `Content-Length`, send half the body
    /// and close the connection (a truncated download).
    pub truncate_share: f64,
    /// Share of tmp_url downloads that send the first half of the body without a
    /// `Content-Length` and end it cleanly (a server or cache that kept half a file: nothing
    /// on the wire says it is short).
    pub short_share: f64,
    /// Share of tasks and batches (and of result URLs) whose first answer is not settled yet:
    /// the first poll of such a task answers 404, its first DONE answer comes without its
    /// result (a batch's without its results, or, for odd batch ids, without the last one),
    /// the first download of such a result URL answers 404 (a store that lags the
    /// answer that named the task, a result not attached yet, a URL not propagated yet).
    pub unsettled_share: f64,
    /// The first this many polls of every task and batch answer 429 (`RateLimit-Reset: 0`):
    /// another client spending the same key's budget for a long while.
    pub polls_rate_limited: u32,
    /// The first this many submits (async and batch, counted together) answer 429 with
    /// `RateLimit-Reset: 0`: another client spending the key's budget; nothing is created.
    pub submits_rate_limited: u32,
    /// The first this many polls of every task and batch answer 409 (a conflict Claid's
    /// contract does not name for a GET): a task Claid billed is not given up at the first.
    pub polls_refused: u32,
    /// The first this many polls of every task and batch answer 404 (a store that lags the
    /// answer that named the task for a while): a task Claid billed is not taken for lost
    /// while it is young.
    pub polls_not_found: u32,
    /// Output objects written into a storage keep only the first half of their bytes (a store
    /// that kept part of an object).
    pub short_objects: bool,
    /// Share of tmp_url downloads that serve another image than the result describes (one
    /// pixel wider and taller than `output_object` says).
    pub wrong_image_share: f64,
    /// How the rate-limit windows count.
    pub rate_window: RateWindow,
    /// Most images of one batch processed at once (at least 1). Claid does not publish its
    /// per-batch parallelism; this is the emulator's assumption.
    pub batch_parallelism: usize,
    /// Batch results in random order instead of input order.
    pub shuffle_results: bool,
    /// Share of batch results whose output file name matches no input (a random name).
    pub batch_rename_share: f64,
    /// A batch image's error names no input, neither in its text nor by `input_object` (Claid
    /// documents neither). For tests only: `claid-hotfolder emulator` has no flag for it.
    pub anonymous_batch_errors: bool,
    /// A DONE batch of two images or more lists its first result again in the place of its
    /// last (the last image has no result). For tests only, like `anonymous_batch_errors`.
    pub repeat_batch_result: bool,
    /// How the `result_url` of tasks and batches is given (Claid's schema makes it optional).
    pub result_url: ResultUrlForm,
    /// How long the answer to a submit (async or batch) is held after the task was created, so
    /// the task can finish and its webhook arrive before the client learns the task id.
    pub submit_response_delay: Duration,
    /// Where finished async tasks and batches are announced (`http://` only); `None` = no webhooks.
    pub webhook_url: Option<String>,
    /// Key of the `X-Claid-Hmac-SHA256` signature; `None` sends no signature header.
    pub webhook_secret: Option<String>,
    /// Encoding of the signature.
    pub webhook_digest: WebhookDigest,
    /// Whether the result object is sent bare or as `{"data": …}`.
    pub webhook_body: WebhookBody,
    /// Share of webhooks never sent.
    pub webhook_drop_share: f64,
    /// The announcement (1-based, in the order they are made) never sent, whatever the share:
    /// a test's one lost webhook.
    pub webhook_drop_nth: Option<u64>,
    /// Every announcement from this one on (1-based) never sent: a test's webhooks that stop
    /// mid-run.
    pub webhook_drop_from: Option<u64>,
    /// Share of webhooks sent twice.
    pub webhook_duplicate_share: f64,
    /// Share of webhooks sent only after `webhook_delay`.
    pub webhook_delay_share: f64,
    /// How long a delayed webhook waits.
    pub webhook_delay: Duration,
    /// Also announce every async task when it is accepted (status ACCEPTED, no result), as
    /// Claid's webhook settings may: the final webhook follows as usual.
    pub webhook_on_accept: bool,
    /// Share of webhooks held back until the next one has been sent (out of completion order),
    /// at most `webhook_reorder_hold`.
    pub webhook_reorder_share: f64,
    /// Longest a reordered webhook waits for the next one.
    pub webhook_reorder_hold: Duration,
    /// Share of webhooks preceded by a forged copy: status ERROR, signed with a wrong key.
    pub webhook_forged_share: f64,
    /// Echo each task's request (in answers, polls and webhooks) as a model-backed server may:
    /// every documented default filled in, the other fields `null`, shorthands in their object
    /// forms (`claid::request::with_defaults`); otherwise as it was sent.
    pub echo_defaults: bool,
}

/// Encoding of the `X-Claid-Hmac-SHA256` digest (Claid does not document it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum WebhookDigest {
    /// Lowercase hex, 64 characters.
    #[default]
    Hex,
    /// Standard base64 with padding, 44 characters.
    Base64,
}

/// Shape of a webhook body (Claid does not document it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum WebhookBody {
    /// The result object itself, as in `data` of the poll answer.
    #[default]
    Bare,
    /// `{"data": <result object>}`, exactly the poll answer.
    Wrapped,
}

/// Default of `batch_parallelism` (`--batch-parallelism`).
pub const DEFAULT_BATCH_PARALLELISM: usize = 8;

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            api_key: None,
            latency: Latency::Fixed(Duration::from_millis(20)),
            seed: None,
            first_task_id: 1,
            error_share: 0.0,
            fault_5xx: FaultShares::default(),
            drop_share: 0.0,
            drop_first: 0,
            garbled_share: 0.0,
            rps: None,
            rpm: None,
            tmp_url_ttl: Duration::from_secs(24 * 3600),
            corrupt_patterns: vec!["corrupt".to_owned()],
            storage_root: None,
            storages: Vec::new(),
            storage_endpoint: None,
            storage_region: None,
            static_dir: None,
            credits_exhausted: false,
            forbidden: false,
            poll_delay_share: 0.0,
            poll_delay: Duration::ZERO,
            truncate_share: 0.0,
            short_share: 0.0,
            unsettled_share: 0.0,
            polls_rate_limited: 0,
            submits_rate_limited: 0,
            polls_refused: 0,
            polls_not_found: 0,
            short_objects: false,
            wrong_image_share: 0.0,
            rate_window: RateWindow::Sliding,
            batch_parallelism: DEFAULT_BATCH_PARALLELISM,
            shuffle_results: false,
            batch_rename_share: 0.0,
            anonymous_batch_errors: false,
            repeat_batch_result: false,
            result_url: ResultUrlForm::Local,
            submit_response_delay: Duration::ZERO,
            webhook_url: None,
            webhook_secret: None,
            webhook_digest: WebhookDigest::Hex,
            webhook_body: WebhookBody::Bare,
            webhook_drop_share: 0.0,
            webhook_drop_nth: None,
            webhook_drop_from: None,
            webhook_duplicate_share: 0.0,
            webhook_delay_share: 0.0,
            webhook_delay: Duration::ZERO,
            webhook_on_accept: false,
            webhook_reorder_share: 0.0,
            webhook_reorder_hold: DEFAULT_REORDER_HOLD,
            webhook_forged_share: 0.0,
            echo_defaults: false,
        }
    }
}

/// Default of `webhook_reorder_hold` (`--webhook-reorder-hold`).
pub const DEFAULT_REORDER_HOLD: Duration = Duration::from_secs(5);

impl Scenario {
    /// Only this Bearer key is accepted.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }
    /// Processing latency distribution of async tasks.
    pub fn latency(mut self, latency: Latency) -> Self {
        self.latency = latency;
        self
    }
    /// The id of the first task or batch (see the field).
    pub fn first_task_id(mut self, id: u64) -> Self {
        self.first_task_id = id.max(1);
        self
    }
    /// Ids from the wall clock (see [`clock_task_id`]): for an emulator whose daemon keeps a
    /// store across the emulator's restarts.
    pub fn ids_from_the_clock(self) -> Self {
        self.first_task_id(clock_task_id())
    }
    /// Makes every random decision reproducible.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
    /// Share of async tasks ending in ERROR.
    pub fn error_share(mut self, share: f64) -> Self {
        self.error_share = share;
        self
    }
    /// Share of 5xx per endpoint.
    pub fn fault_5xx(mut self, shares: FaultShares) -> Self {
        self.fault_5xx = shares;
        self
    }
    /// Share of async submits whose response is dropped after the task was created.
    pub fn drop_share(mut self, share: f64) -> Self {
        self.drop_share = share;
        self
    }

    /// The first `n` submits' answers (async or batch) dropped after their task was made.
    pub fn drop_first(mut self, n: u32) -> Self {
        self.drop_first = n;
        self
    }

    pub fn garbled_share(mut self, share: f64) -> Self {
        self.garbled_share = share;
        self
    }
    /// Per-second request limit.
    pub fn rps(mut self, limit: u32) -> Self {
        self.rps = Some(limit);
        self
    }
    /// Per-minute request limit.
    pub fn rpm(mut self, limit: u32) -> Self {
        self.rpm = Some(limit);
        self
    }
    /// Lifetime of tmp_url downloads.
    pub fn tmp_url_ttl(mut self, ttl: Duration) -> Self {
        self.tmp_url_ttl = ttl;
        self
    }
    /// Replaces the "corrupt input" substrings.
    pub fn corrupt_patterns(mut self, patterns: Vec<String>) -> Self {
        self.corrupt_patterns = patterns;
        self
    }
    /// Root folder of `storage://` inputs.
    pub fn storage_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.storage_root = Some(root.into());
        self
    }
    /// A storage connector that exists from the start.
    pub fn storage(mut self, connector: StorageConnector) -> Self {
        self.storages.push(connector);
        self
    }
    /// S3 endpoint (`http://127.0.0.1:9000`) of connectors created through the API.
    pub fn storage_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.storage_endpoint = Some(endpoint.into());
        self
    }
    /// Signing region of connectors created through the API.
    pub fn storage_region(mut self, region: impl Into<String>) -> Self {
        self.storage_region = Some(region.into());
        self
    }
    /// Folder served at `/_static/`.
    pub fn static_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.static_dir = Some(dir.into());
        self
    }
    /// Start with credits exhausted (402).
    pub fn credits_exhausted(mut self, on: bool) -> Self {
        self.credits_exhausted = on;
        self
    }
    /// Start with the key lacking its scope (403).
    pub fn forbidden(mut self, on: bool) -> Self {
        self.forbidden = on;
        self
    }
    /// A share of polls is held for `delay` before being answered.
    pub fn poll_delay(mut self, share: f64, delay: Duration) -> Self {
        self.poll_delay_share = share;
        self.poll_delay = delay;
        self
    }
    /// Share of tmp_url downloads cut off after half the announced bytes.
    pub fn truncate_share(mut self, share: f64) -> Self {
        self.truncate_share = share;
        self
    }
    /// Share of tmp_url downloads that serve an image of other dimensions.
    pub fn short_share(mut self, share: f64) -> Self {
        self.short_share = share;
        self
    }
    /// Share of tasks, batches and result URLs whose first answer is not settled yet (see the
    /// field).
    pub fn unsettled_share(mut self, share: f64) -> Self {
        self.unsettled_share = share;
        self
    }

    /// Output objects keep half their bytes (see the field).
    pub fn short_objects(mut self, on: bool) -> Self {
        self.short_objects = on;
        self
    }

    /// 404 to the first `n` polls of every task and batch (see the field).
    pub fn polls_not_found(mut self, n: u32) -> Self {
        self.polls_not_found = n;
        self
    }

    /// 409 to the first `n` polls of every task and batch (see the field).
    pub fn polls_refused(mut self, n: u32) -> Self {
        self.polls_refused = n;
        self
    }

    /// 429 to the first `n` polls of every task and batch (see the field).
    pub fn submits_rate_limited(mut self, n: u32) -> Self {
        self.submits_rate_limited = n;
        self
    }

    /// 429 to the first `n` polls of every task and batch (see the field).
    pub fn polls_rate_limited(mut self, n: u32) -> Self {
        self.polls_rate_limited = n;
        self
    }

    pub fn wrong_image_share(mut self, share: f64) -> Self {
        self.wrong_image_share = share;
        self
    }
    /// Sliding (the default) or fixed rate-limit windows.
    pub fn rate_window(mut self, window: RateWindow) -> Self {
        self.rate_window = window;
        self
    }
    /// Most images of one batch processed at once (0 is taken as 1).
    pub fn batch_parallelism(mut self, images: usize) -> Self {
        self.batch_parallelism = images.max(1);
        self
    }
    /// Batch results in random order.
    pub fn shuffle_results(mut self, on: bool) -> Self {
        self.shuffle_results = on;
        self
    }
    /// Share of batch results named after no input.
    pub fn batch_rename_share(mut self, share: f64) -> Self {
        self.batch_rename_share = share;
        self
    }
    /// Batch errors that name no input.
    pub fn anonymous_batch_errors(mut self, on: bool) -> Self {
        self.anonymous_batch_errors = on;
        self
    }
    /// A batch's first result listed again in the place of its last.
    pub fn repeat_batch_result(mut self, on: bool) -> Self {
        self.repeat_batch_result = on;
        self
    }
    /// How `result_url` is given in every answer and webhook.
    pub fn result_url(mut self, form: ResultUrlForm) -> Self {
        self.result_url = form;
        self
    }
    /// Holds every submit's answer for `delay` after the task was created.
    pub fn submit_response_delay(mut self, delay: Duration) -> Self {
        self.submit_response_delay = delay;
        self
    }
    /// Announces finished tasks and batches to `url` (`http://…`).
    pub fn webhook_url(mut self, url: impl Into<String>) -> Self {
        self.webhook_url = Some(url.into());
        self
    }
    /// Signs webhooks with `secret`.
    pub fn webhook_secret(mut self, secret: impl Into<String>) -> Self {
        self.webhook_secret = Some(secret.into());
        self
    }
    /// Hex (the default) or base64 signatures.
    pub fn webhook_digest(mut self, digest: WebhookDigest) -> Self {
        self.webhook_digest = digest;
        self
    }
    /// Bare (the default) or `{"data": …}` bodies.
    pub fn webhook_body(mut self, body: WebhookBody) -> Self {
        self.webhook_body = body;
        self
    }
    /// Share of webhooks never sent.
    pub fn webhook_drop_share(mut self, share: f64) -> Self {
        self.webhook_drop_share = share;
        self
    }
    /// The `nth` announcement (1-based) never sent.
    pub fn webhook_drop_nth(mut self, nth: u64) -> Self {
        self.webhook_drop_nth = Some(nth);
        self
    }
    /// Every announcement from the `nth` (1-based) on never sent.
    pub fn webhook_drop_from(mut self, nth: u64) -> Self {
        self.webhook_drop_from = Some(nth);
        self
    }
    /// Share of webhooks sent twice.
    pub fn webhook_duplicate_share(mut self, share: f64) -> Self {
        self.webhook_duplicate_share = share;
        self
    }
    /// A share of webhooks is sent `delay` late.
    pub fn webhook_delay(mut self, share: f64, delay: Duration) -> Self {
        self.webhook_delay_share = share;
        self.webhook_delay = delay;
        self
    }
    /// Every async task is also announced when accepted.
    pub fn webhook_on_accept(mut self, on: bool) -> Self {
        self.webhook_on_accept = on;
        self
    }
    /// A share of webhooks is held until the next one was sent (at most `max_hold`).
    pub fn webhook_reorder(mut self, share: f64, max_hold: Duration) -> Self {
        self.webhook_reorder_share = share;
        self.webhook_reorder_hold = max_hold;
        self
    }
    /// Share of webhooks preceded by a forged copy (status ERROR, wrong signature).
    pub fn webhook_forged_share(mut self, share: f64) -> Self {
        self.webhook_forged_share = share;
        self
    }
    /// Echo requests with their documented defaults filled in (see the field).
    pub fn echo_defaults(mut self, on: bool) -> Self {
        self.echo_defaults = on;
        self
    }
}

fn redacted(key: &Option<String>) -> &'static str {
    if key.is_some() {
        "Some(<redacted>)"
    } else {
        "None"
    }
}

impl std::fmt::Debug for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scenario")
            .field("api_key", &format_args!("{}", redacted(&self.api_key)))
            .field("latency", &self.latency)
            .field("seed", &self.seed)
            .field("error_share", &self.error_share)
            .field("fault_5xx", &self.fault_5xx)
            .field("drop_share", &self.drop_share)
            .field("drop_first", &self.drop_first)
            .field("garbled_share", &self.garbled_share)
            .field("rps", &self.rps)
            .field("rpm", &self.rpm)
            .field("tmp_url_ttl", &self.tmp_url_ttl)
            .field("corrupt_patterns", &self.corrupt_patterns)
            .field("storage_root", &self.storage_root)
            .field("storages", &self.storages)
            .field("storage_endpoint", &self.storage_endpoint)
            .field("storage_region", &self.storage_region)
            .field("static_dir", &self.static_dir)
            .field("credits_exhausted", &self.credits_exhausted)
            .field("forbidden", &self.forbidden)
            .field("poll_delay_share", &self.poll_delay_share)
            .field("poll_delay", &self.poll_delay)
            .field("truncate_share", &self.truncate_share)
            .field("short_share", &self.short_share)
            .field("unsettled_share", &self.unsettled_share)
            .field("polls_rate_limited", &self.polls_rate_limited)
            .field("submits_rate_limited", &self.submits_rate_limited)
            .field("polls_refused", &self.polls_refused)
            .field("polls_not_found", &self.polls_not_found)
            .field("short_objects", &self.short_objects)
            .field("wrong_image_share", &self.wrong_image_share)
            .field("rate_window", &self.rate_window)
            .field("batch_parallelism", &self.batch_parallelism)
            .field("shuffle_results", &self.shuffle_results)
            .field("batch_rename_share", &self.batch_rename_share)
            .field("anonymous_batch_errors", &self.anonymous_batch_errors)
            .field("repeat_batch_result", &self.repeat_batch_result)
            .field("result_url", &self.result_url)
            .field("submit_response_delay", &self.submit_response_delay)
            .field("webhook_url", &self.webhook_url)
            .field(
                "webhook_secret",
                &format_args!("{}", redacted(&self.webhook_secret)),
            )
            .field("webhook_digest", &self.webhook_digest)
            .field("webhook_body", &self.webhook_body)
            .field("webhook_drop_share", &self.webhook_drop_share)
            .field("webhook_drop_nth", &self.webhook_drop_nth)
            .field("webhook_drop_from", &self.webhook_drop_from)
            .field("webhook_duplicate_share", &self.webhook_duplicate_share)
            .field("webhook_delay_share", &self.webhook_delay_share)
            .field("webhook_delay", &self.webhook_delay)
            .field("webhook_on_accept", &self.webhook_on_accept)
            .field("webhook_reorder_share", &self.webhook_reorder_share)
            .field("webhook_reorder_hold", &self.webhook_reorder_hold)
            .field("webhook_forged_share", &self.webhook_forged_share)
            .field("echo_defaults", &self.echo_defaults)
            .finish()
    }
}

impl std::fmt::Debug for ScenarioArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Same content as the scenario it becomes.
        std::fmt::Debug::fmt(&self.clone().into_scenario(), f)
    }
}

fn parse_share(text: &str) -> Result<f64, String> {
    let v: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{text:?} is not a share between 0 and 1"))
    }
}

fn parse_parallelism(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "{text:?} is not a whole number of images, at least 1"
        )),
    }
}

/// The connectors of a `--storages` file, read when the flag is parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoragesFile(pub Vec<StorageConnector>);

fn parse_storages_file(text: &str) -> Result<StoragesFile, String> {
    storage_file::load(std::path::Path::new(text))
        .map(StoragesFile)
        .map_err(|err| err.to_string())
}

fn parse_endpoint(text: &str) -> Result<String, String> {
    let valid = (text.starts_with("http://") || text.starts_with("https://"))
        && text
            .parse::<hyper::Uri>()
            .is_ok_and(|uri| uri.host().is_some());
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not an http:// or https:// URL of an S3-compatible server"
        ))
    }
}

fn parse_webhook_url(text: &str) -> Result<String, String> {
    let valid = text.starts_with("http://")
        && text
            .parse::<hyper::Uri>()
            .is_ok_and(|uri| uri.host().is_some());
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not an http:// URL (the emulator sends webhooks without TLS; put a TLS proxy in front for https)"
        ))
    }
}

/// The scenario flags of `claid-hotfolder emulator` (the lead adds `--listen`). `Debug` never
/// shows the API key.
#[derive(Clone, clap::Args)]
pub struct ScenarioArgs {
    /// The only accepted API key; when neither this nor CLAID_API_KEY is set, any non-empty key works.
    #[arg(long, env = "CLAID_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Processing latency: fixed:200ms, uniform:100ms..2s or lognormal:500ms,0.6 (median, sigma).
    #[arg(long, default_value = "fixed:300ms")]
    pub latency: Latency,
    /// Seed for every random decision (latency, shares); random when absent.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Share (0..1) of async tasks that end in ERROR.
    #[arg(long, default_value = "0", value_parser = parse_share)]
    pub error_share: f64,
    /// Share (0..1) of async submits answered 500 (no task created).
    #[arg(long, default_value = "0", value_parser = parse_share)]
    pub submit_5xx: f64,
    /// Share (0..1) of polls answered 500.
    #[arg(long, default_value = "0", value_parser = parse_share)]
    pub poll_5xx: f64,
    /// Share (0..1) of tmp_url downloads answered 500.
    #[arg(long, default_value = "0", value_parser = parse_share)]
    pub download_5xx: f64,
    /// Share (0..1) of uploads answered 500.
    #[arg(long, default_value = "0", value_parser = parse_share)]
    pub upload_5xx: f64,
    /// Share (0..1) of sync edits answered 500.
    #[arg(long, default_value = "0", value_parser = parse_share)]
    pub sync_5xx: f64,
    /// Share (0..1) of async submits whose task is created but whose connection is closed
    /// without a response.
    #[arg(long, default_value = "0", value_parser = parse_share)]
    pub drop_share: f64,
    /// Share (0..1) of async and batch submits whose task is created but answered 200 with a
    /// body that is no task (its id cannot be read).
    #[arg(long, default_value = "0", value_parser = parse_share)]
    pub garbled_share: f64,
    /// Requests per one-second window before 429 (0 = unlimited); Claid's default is 4.
    #[arg(long, default_value_t = 4)]
    pub rps: u32,
    /// Requests per one-minute window before 429 (0 = unlimited); Claid's default is 120.
    #[arg(long, default_value_t = 120)]
    pub rpm: u32,
    /// How long tmp_url downloads stay available.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub tmp_url_ttl: Duration,
    /// Inputs whose name contains this substring fail (repeatable).
    #[arg(long = "corrupt-pattern", default_value = "corrupt")]
    pub corrupt_patterns: Vec<String>,
    /// Folder behind storage://NAME/path inputs whose NAME is no connector (<root>/NAME/path).
    #[arg(long)]
    pub storage_root: Option<PathBuf>,
    /// YAML file of storage connectors that exist from the start (S3 buckets; docs/emulator.md).
    #[arg(long, value_name = "FILE", value_parser = parse_storages_file)]
    pub storages: Option<StoragesFile>,
    /// S3 endpoint of connectors created through POST /v1/storage/storages (default: Amazon S3).
    #[arg(long, value_name = "URL", value_parser = parse_endpoint)]
    pub storage_endpoint: Option<String>,
    /// Signing region of connectors created through POST /v1/storage/storages.
    #[arg(long, value_name = "REGION", default_value = "us-east-1")]
    pub storage_region: String,
    /// Folder served at /_static/ (handy as http:// inputs).
    #[arg(long)]
    pub static_dir: Option<PathBuf>,
    /// Start with credits exhausted: billable requests answer 402.
    #[arg(long)]
    pub credits_exhausted: bool,
    /// Start with the key lacking scope: API requests answer 403.
    #[arg(long)]
    pub forbidden: bool,
    /// Share (0..1) of polls held for --poll-delay before they are answered.
    #[arg(long, default_value = "0", value_parser = parse_share)]
    pub poll_delay_share: f64,
    /// How long a delayed poll is held (make it longer than the client's request timeout).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub poll_delay: Duration,
    /// Share (0..1) of tmp_url downloads that send half the announced Content-Length, then close.
    #[arg(long, default_value = "0", value_parser = parse_share)]
    pub truncate_share: f64,
    /// Share (0..1) of tmp_url downloads that send half the body without a Content-Length and end cleanly.
    #[arg(long, default_value = "0", value_parser = parse_share)]
    pub short_share: f64,
    /// Share (0..1) of tasks, batches and result URLs whose first answer is not settled: a 404 to the first poll, a DONE without its result, a 404 to the first download.
    #[arg(long, default_value = "0", value_parser = parse_share)]
    pub unsettled_share: f64,
    /// Share (0..1) of tmp_url downloads that serve an image of other dimensions than the result says.
    #[arg(long, default_value = "0", value_parser = parse_share)]
    pub wrong_image_share: f64,
    /// How rate-limit windows count: sliding (any 1 s / 60 s span) or fixed (reset at each boundary).
    #[arg(long, value_enum, default_value = "sliding")]
    pub rate_window: RateWindow,
    /// Most images of one batch processed at once (Claid does not publish it; an assumption).
    #[arg(long, default_value_t = DEFAULT_BATCH_PARALLELISM, value_parser = parse_parallelism)]
    pub batch_parallelism: usize,
    /// Return batch results in random order instead of input order.
    #[arg(long)]
    pub shuffle_results: bool,
    /// Share (0..1) of batch results whose output file name matches no input.
    #[arg(long, default_value = "0", value_parser = parse_share)]
    pub batch_rename_share: f64,
    /// How tasks' and batches' `result_url` is given: on the host asked (local), left out
    /// (omitted: Claid's schema does not require it), or on Claid's own host (foreign).
    #[arg(long, value_enum, default_value_t = ResultUrlForm::Local)]
    pub result_url: ResultUrlForm,
    /// Hold each submit's answer this long after creating the task (webhooks can arrive first).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub submit_response_delay: Duration,
    /// POST each finished async task and batch to this http:// URL.
    #[arg(long, value_parser = parse_webhook_url)]
    pub webhook_url: Option<String>,
    /// Sign webhooks with this secret (header X-Claid-Hmac-SHA256); unsigned when absent.
    #[arg(long, env = "CLAID_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Encoding of the webhook signature.
    #[arg(long, value_enum, default_value = "hex")]
    pub webhook_digest: WebhookDigest,
    /// Webhook body: the bare result object, or wrapped as {"data": …}.
    #[arg(long, value_enum, default_value = "bare")]
    pub webhook_body: WebhookBody,
    /// Share (0..1) of webhooks never sent.
    #[arg(long, default_value = "0", value_parser = parse_share)]
    pub webhook_drop_share: f64,
    /// Share (0..1) of webhooks sent twice.
    #[arg(long, default_value = "0", value_parser = parse_share)]
    pub webhook_duplicate_share: f64,
    /// Share (0..1) of webhooks sent --webhook-delay late.
    #[arg(long, default_value = "0", value_parser = parse_share)]
    pub webhook_delay_share: f64,
    /// How late a delayed webhook is sent.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub webhook_delay: Duration,
    /// Also send an ACCEPTED webhook (no result) for every async task when it is created.
    #[arg(long)]
    pub webhook_on_accept: bool,
    /// Share (0..1) of webhooks held until the next one was sent (out of completion order).
    #[arg(long, default_value = "0", value_parser = parse_share)]
    pub webhook_reorder_share: f64,
    /// Longest a reordered webhook waits for the next one.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub webhook_reorder_hold: Duration,
    /// Share (0..1) of webhooks preceded by a forged copy (status ERROR, wrong signature).
    #[arg(long, default_value = "0", value_parser = parse_share)]
    pub webhook_forged_share: f64,
    /// Echo each task's request with the schema's defaults filled in, as a model-backed
    /// server may (answers, polls and webhooks); otherwise as it was sent.
    #[arg(long)]
    pub echo_defaults: bool,
}

impl ScenarioArgs {
    /// Turns the flags into a scenario.
    pub fn into_scenario(self) -> Scenario {
        Scenario {
            api_key: self.api_key.filter(|k| !k.is_empty()),
            latency: self.latency,
            seed: self.seed,
            first_task_id: clock_task_id(),
            error_share: self.error_share,
            fault_5xx: FaultShares {
                submit: self.submit_5xx,
                poll: self.poll_5xx,
                download: self.download_5xx,
                upload: self.upload_5xx,
                sync: self.sync_5xx,
            },
            drop_share: self.drop_share,
            drop_first: 0,
            garbled_share: self.garbled_share,
            rps: (self.rps > 0).then_some(self.rps),
            rpm: (self.rpm > 0).then_some(self.rpm),
            tmp_url_ttl: self.tmp_url_ttl,
            corrupt_patterns: self.corrupt_patterns,
            storage_root: self.storage_root,
            storages: self.storages.map(|file| file.0).unwrap_or_default(),
            storage_endpoint: self.storage_endpoint,
            storage_region: Some(self.storage_region),
            static_dir: self.static_dir,
            credits_exhausted: self.credits_exhausted,
            forbidden: self.forbidden,
            poll_delay_share: self.poll_delay_share,
            poll_delay: self.poll_delay,
            truncate_share: self.truncate_share,
            short_share: self.short_share,
            unsettled_share: self.unsettled_share,
            polls_rate_limited: 0,
            submits_rate_limited: 0,
            polls_refused: 0,
            polls_not_found: 0,
            short_objects: false,
            wrong_image_share: self.wrong_image_share,
            rate_window: self.rate_window,
            batch_parallelism: self.batch_parallelism.max(1),
            shuffle_results: self.shuffle_results,
            batch_rename_share: self.batch_rename_share,
            anonymous_batch_errors: false,
            repeat_batch_result: false,
            result_url: self.result_url,
            submit_response_delay: self.submit_response_delay,
            webhook_url: self.webhook_url,
            webhook_secret: self.webhook_secret.filter(|s| !s.is_empty()),
            webhook_digest: self.webhook_digest,
            webhook_body: self.webhook_body,
            webhook_drop_share: self.webhook_drop_share,
            webhook_drop_nth: None,
            webhook_drop_from: None,
            webhook_duplicate_share: self.webhook_duplicate_share,
            webhook_delay_share: self.webhook_delay_share,
            webhook_delay: self.webhook_delay,
            webhook_on_accept: self.webhook_on_accept,
            webhook_reorder_share: self.webhook_reorder_share,
            webhook_reorder_hold: self.webhook_reorder_hold,
            webhook_forged_share: self.webhook_forged_share,
            echo_defaults: self.echo_defaults,
        }
    }
}

/// A first task id from the wall clock: a thousand ids per millisecond since 1970 (about
/// 1.8e15 in 2026, below 2^53, so JSON readers keep it exact). An emulator started later
/// starts above every id an earlier one gave, unless that one made more than a thousand tasks
/// a millisecond.
pub fn clock_task_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| {
            u64::try_from(d.as_millis())
                .unwrap_or(1)
                .saturating_mul(1000)
        })
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn latency_parses_every_shape() {
        assert_eq!(
            "200ms".parse::<Latency>().ok(),
            Some(Latency::Fixed(Duration::from_millis(200)))
        );
        assert_eq!(
            "uniform:1s..2s".parse::<Latency>().ok(),
            Some(Latency::Uniform {
                min: Duration::from_secs(1),
                max: Duration::from_secs(2)
            })
        );
        assert_eq!(
            "lognormal:500ms,0.5".parse::<Latency>().ok(),
            Some(Latency::LogNormal {
                median: Duration::from_millis(500),
                sigma: 0.5
            })
        );
        assert!("gauss:1s".parse::<Latency>().is_err());
        assert!("lognormal:1s,-1".parse::<Latency>().is_err());
    }

    #[test]
    fn debug_never_shows_the_key() {
        let s = Scenario::default().api_key("hunter2-secret");
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("redacted"),
            "{shown}"
        );
    }

    #[test]
    fn debug_never_shows_the_webhook_secret() {
        let s = Scenario::default()
            .webhook_url("http://127.0.0.1:9/hook")
            .webhook_secret("swordfish-hmac");
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("swordfish") && shown.contains("webhook_secret: Some(<redacted>)"),
            "{shown}"
        );
    }

    #[test]
    fn debug_never_shows_a_storage_secret() {
        let s = Scenario::default().storage(StorageConnector {
            name: "cat".to_owned(),
            storage: crate::objects::ObjectStorageConfig {
                bucket: "b".to_owned(),
                prefix: String::new(),
                endpoint: None,
                region: None,
                access: crate::objects::Access::S3(crate::objects::Credentials::new(
                    "AKID",
                    "s3-hunter2",
                )),
            },
        });
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("AKID") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    #[test]
    fn samples_stay_in_range() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let u = Latency::Uniform {
            min: Duration::from_millis(10),
            max: Duration::from_millis(20),
        };
        for _ in 0..1000 {
            let d = u.sample(&mut rng);
            assert!(d >= Duration::from_millis(10) && d <= Duration::from_millis(20));
        }
        let l = Latency::LogNormal {
            median: Duration::from_millis(100),
            sigma: 0.5,
        };
        let mut v: Vec<f64> = (0..2001)
            .map(|_| l.sample(&mut rng).as_secs_f64())
            .collect();
        v.sort_by(f64::total_cmp);
        let median = v[1000];
        assert!((0.08..0.12).contains(&median), "median {median}");
    }
}
