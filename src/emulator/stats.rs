//! What the emulator saw (`Stats`, also served at `GET /_emulator/stats`) and the runtime
//! toggles (`Control`, also `POST /_emulator/control`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Exact counters; tests and benchmarks use them to count duplicates and wasted calls.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct Stats {
    /// Async submits that created a task (including those whose response was dropped).
    pub submits: u64,
    /// Key = `"<input> <sha256-hex of canonical {operations, output} JSON>"`.
    pub submits_by_key: BTreeMap<String, u64>,
    /// Sum over keys of (count - 1): work paid for twice.
    pub duplicate_submits: u64,
    /// Successful sync edits (`POST …/image/edit`).
    pub sync_edits: u64,
    /// Successful uploads (`POST …/image/edit/upload`).
    pub uploads: u64,
    /// Poll requests that reached the handler (after auth and rate limiting).
    pub polls: u64,
    /// Polls per existing task id.
    pub polls_by_task: BTreeMap<u64, u64>,
    /// Successful tmp_url downloads (the complete, right image; the faults below not included).
    pub downloads: u64,
    /// tmp_url downloads answered 410 because the result had expired.
    pub downloads_expired: u64,
    /// tmp_url downloads cut off after half the announced `Content-Length` (injected).
    pub downloads_truncated: u64,
    /// tmp_url downloads that sent half the body without a `Content-Length`, ended cleanly
    /// (injected).
    #[serde(default)]
    pub downloads_short: u64,
    /// Answers made unsettled by `unsettled_share` (404 to a first poll or download, a DONE
    /// without its result).
    pub unsettled_answers: u64,
    /// tmp_url downloads that served an image of other dimensions than the result (injected).
    pub downloads_wrong_image: u64,
    /// Polls held for the scenario's `poll_delay` before their answer (injected).
    pub polls_delayed: u64,
    /// 402 answers sent (credits exhausted).
    pub refused_402: u64,
    /// 403 answers sent (forbidden).
    pub refused_403: u64,
    /// The first [`REFUSED_CALLS_KEPT`] calls answered 402 or 403: when, and to which
    /// endpoint (tests read how often a pause's calls went).
    pub refused_calls: Vec<RefusedCall>,
    /// 429 answers sent.
    pub rate_limited: u64,
    /// 5xx answers sent (injected faults and `down`).
    pub errors_5xx: u64,
    /// Submits whose task was created but whose connection was closed without a response.
    pub dropped_responses: u64,
    /// Submits whose task was created but answered 200 with a body that is no task.
    pub garbled_responses: u64,
    /// Async tasks that ended in ERROR.
    pub tasks_errored: u64,
    /// Most API requests in flight at once.
    pub max_concurrent: u64,
    /// API requests received (under `/v1` or `/v1-beta1`), whatever their outcome.
    pub requests: u64,
    /// Batch submits that created a batch (including those whose response was dropped).
    pub batch_submits: u64,
    /// Images in those batches; each is also counted in `submits_by_key` (under the same key an
    /// async submit of that image would have), so duplicates count across async and batch.
    pub batch_images: u64,
    /// Batch poll requests that reached the handler (after auth and rate limiting).
    pub batch_polls: u64,
    /// Batch images that ended in `errors` instead of `results`.
    pub batch_images_failed: u64,
    /// Batch results given a file name that matches no input (injected).
    pub batch_results_renamed: u64,
    /// Per batch id: what the emulator recorded while processing it.
    pub batches: BTreeMap<u64, BatchTrace>,
    /// Genuine webhook deliveries (duplicates, delayed and reordered ones included) answered 2xx.
    pub webhooks_sent: u64,
    /// Genuine webhook deliveries answered otherwise, or not at all (refused, timed out).
    pub webhooks_failed: u64,
    /// Webhooks the drop fault never sent.
    pub webhooks_dropped: u64,
    /// Webhooks lost because the delivery queue was full.
    pub webhooks_overflow: u64,
    /// Extra copies sent by the duplicate fault.
    pub webhooks_duplicated: u64,
    /// Webhooks held back by the delay fault.
    pub webhooks_delayed: u64,
    /// Webhooks held back by the reorder fault until a later one was sent.
    pub webhooks_reordered: u64,
    /// Forged deliveries sent (status ERROR, wrong signature).
    pub webhooks_forged: u64,
    /// Forged deliveries the receiver answered 2xx: it did not check the signature.
    pub webhooks_forged_accepted: u64,
    /// Input objects read from a storage connector's bucket.
    pub storage_reads: u64,
    /// Bytes of those objects.
    pub storage_read_bytes: u64,
    /// Output objects written to a storage connector's bucket (each in one request, whole).
    pub storage_writes: u64,
    /// Bytes of those objects.
    pub storage_written_bytes: u64,
    /// Folder listings (batch folder inputs).
    pub storage_lists: u64,
    /// Storage reads, writes and listings that failed (missing object, denied, unreachable).
    pub storage_errors: u64,
}

/// How many refused calls [`Stats::refused_calls`] keeps.
pub const REFUSED_CALLS_KEPT: usize = 1_000;

/// A call the emulator answered 402 or 403 (in [`Stats::refused_calls`]).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct RefusedCall {
    /// Milliseconds since the Unix epoch, when the answer was made.
    pub at_ms: u64,
    /// `submit`, `poll`, `batch-submit`, `batch-poll`, `sync`, `upload` or `other`.
    pub endpoint: String,
}

/// What the emulator recorded about one batch (in [`Stats::batches`]).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct BatchTrace {
    /// Images submitted in the batch.
    pub images: u64,
    /// Images whose output name (input basename) an earlier image of the batch already has:
    /// their outputs would overwrite each other in a destination folder.
    pub colliding_names: u64,
    /// Images that ended in `errors`.
    pub failed: u64,
    /// Results given a name that matches no input.
    pub renamed: u64,
    /// Most images of the batch processing at once (at most the scenario's `batch_parallelism`).
    pub peak_parallel: u64,
    /// Images that started only after another image of the batch had finished (they waited
    /// for a free slot).
    pub waited_for_slot: u64,
    /// Milliseconds from the first image's start to the last image's end (0 until DONE/ERROR).
    pub busy_ms: u64,
    /// Polls of this batch.
    pub polls: u64,
}

/// The key under which a submit is counted in `submits_by_key`.
pub fn submit_key(body: &serde_json::Value) -> String {
    let input = body.get("input").and_then(|v| v.as_str()).unwrap_or("");
    let ops = serde_json::json!({
        "operations": canonical(body.get("operations").unwrap_or(&serde_json::Value::Null)),
        "output": canonical(body.get("output").unwrap_or(&serde_json::Value::Null)),
    });
    let hash = Sha256::digest(canonical(&ops).to_string().as_bytes());
    format!("{input} {}", hex::encode(hash))
}

/// Rebuilds objects with sorted keys, whatever serde_json's map ordering feature is.
fn canonical(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let sorted: BTreeMap<&String, serde_json::Value> =
                map.iter().map(|(k, v)| (k, canonical(v))).collect();
            let mut out = serde_json::Map::new();
            for (k, v) in sorted {
                out.insert(k.clone(), v);
            }
            serde_json::Value::Object(out)
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.iter().map(canonical).collect())
        }
        other => other.clone(),
    }
}

/// The counters behind [`Stats`]: a mutex for the maps, atomics for concurrency.
#[derive(Debug, Default)]
pub struct Recorder {
    /// Everything except concurrency, updated under one lock so snapshots are consistent.
    stats: std::sync::Mutex<Stats>,
    /// API requests currently being handled.
    in_flight: AtomicU64,
    /// High-water mark of `in_flight`.
    max_in_flight: AtomicU64,
}

/// Decrements the in-flight count when the request ends (or its connection is dropped).
#[derive(Debug)]
pub struct InFlight(Arc<Recorder>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Recorder {
    /// Runs `f` on the counters.
    pub fn update(&self, f: impl FnOnce(&mut Stats)) {
        let mut guard = self
            .stats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard);
    }

    /// Counts an API request entering; the guard counts it leaving.
    pub fn enter(self: &Arc<Self>) -> InFlight {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        self.update(|s| s.requests += 1);
        InFlight(Arc::clone(self))
    }

    /// Counts a created async task under its key.
    pub fn submitted(&self, key: String) {
        self.update(|s| {
            s.submits += 1;
            let count = s.submits_by_key.entry(key).or_insert(0);
            *count += 1;
            if *count > 1 {
                s.duplicate_submits += 1;
            }
        });
    }

    /// Counts a created batch of images, each under its key; `colliding_names` = images whose
    /// output name an earlier image of the batch already has.
    pub fn batch_submitted(&self, id: u64, keys: Vec<String>, colliding_names: u64) {
        self.update(|s| {
            s.batch_submits += 1;
            let images = keys.len() as u64;
            s.batch_images += images;
            for key in keys {
                let count = s.submits_by_key.entry(key).or_insert(0);
                *count += 1;
                if *count > 1 {
                    s.duplicate_submits += 1;
                }
            }
            s.batches.insert(
                id,
                BatchTrace {
                    images,
                    colliding_names,
                    ..BatchTrace::default()
                },
            );
        });
    }

    /// A consistent copy of every counter.
    pub fn snapshot(&self) -> Stats {
        let mut stats = self
            .stats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        stats.max_concurrent = self.max_in_flight.load(Ordering::SeqCst);
        stats
    }
}

/// Runtime fault toggles, shared with the server.
#[derive(Debug, Clone, Default)]
pub struct Control {
    flags: Arc<Flags>,
}

#[derive(Debug, Default)]
struct Flags {
    credits_exhausted: AtomicBool,
    forbidden: AtomicBool,
    down: AtomicBool,
    downloads_down: AtomicBool,
    downloads_rate_limited: AtomicBool,
    /// A task (or batch) id whose polls answer 500; 0: none.
    polls_down_for: AtomicU64,
    /// Results made before this moment are gone (their day is over); `None`: none yet.
    expired_before: std::sync::Mutex<Option<std::time::Instant>>,
}

/// Body of `POST /_emulator/control` (absent fields stay as they are) and its answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ControlState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits_exhausted: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forbidden: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down: Option<bool>,
    /// Results' `tmp_url`s answer 503 (the result host is away; the API is not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downloads_down: Option<bool>,
    /// Results' `tmp_url`s answer 429 with `Retry-After: 1` (the result host limits its rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downloads_rate_limited: Option<bool>,
    /// The polls of this task (or batch) id answer 500 after 200 ms (0: none); the rest of the
    /// API answers as usual.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub polls_down_for: Option<u64>,
    /// `true`: every result made so far is gone now, as once its day is over (its `tmp_url`
    /// answers 410; a poll still gives it). An action, not a toggle: results made later live
    /// their day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_results: Option<bool>,
}

impl Control {
    pub(crate) fn new(credits_exhausted: bool, forbidden: bool) -> Control {
        let control = Control::default();
        control.set_credits_exhausted(credits_exhausted);
        control.set_forbidden(forbidden);
        control
    }
    /// Billable requests (submit, sync, upload) answer 402 while on.
    pub fn set_credits_exhausted(&self, on: bool) {
        self.flags.credits_exhausted.store(on, Ordering::SeqCst);
    }
    /// Every API request answers 403 while on.
    pub fn set_forbidden(&self, on: bool) {
        self.flags.forbidden.store(on, Ordering::SeqCst);
    }
    /// Every API request answers 503 while on ("the API is down").
    pub fn set_down(&self, on: bool) {
        self.flags.down.store(on, Ordering::SeqCst);
    }
    pub fn credits_exhausted(&self) -> bool {
        self.flags.credits_exhausted.load(Ordering::SeqCst)
    }
    pub fn forbidden(&self) -> bool {
        self.flags.forbidden.load(Ordering::SeqCst)
    }
    pub fn down(&self) -> bool {
        self.flags.down.load(Ordering::SeqCst)
    }
    /// Every result download (`tmp_url`) answers 503 while on; the API answers as usual.
    pub fn set_downloads_down(&self, on: bool) {
        self.flags.downloads_down.store(on, Ordering::SeqCst);
    }
    pub fn downloads_down(&self) -> bool {
        self.flags.downloads_down.load(Ordering::SeqCst)
    }
    /// Every result download (`tmp_url`) answers 429 while on; the API answers as usual.
    pub fn set_downloads_rate_limited(&self, on: bool) {
        self.flags
            .downloads_rate_limited
            .store(on, Ordering::SeqCst);
    }
    pub fn downloads_rate_limited(&self) -> bool {
        self.flags.downloads_rate_limited.load(Ordering::SeqCst)
    }
    /// The polls of task (or batch) `id` answer 500 (`None`: no more); the rest of the API
    /// answers as usual.
    pub fn set_polls_down_for(&self, id: Option<u64>) {
        self.flags
            .polls_down_for
            .store(id.unwrap_or(0), Ordering::SeqCst);
    }
    pub fn polls_down_for(&self) -> Option<u64> {
        Some(self.flags.polls_down_for.load(Ordering::SeqCst)).filter(|id| *id != 0)
    }
    /// Every result made before now is gone, as once its day is over.
    pub fn expire_results(&self) {
        *self
            .flags
            .expired_before
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(std::time::Instant::now());
    }
    /// Whether a result made at `made` is gone by [`Control::expire_results`].
    pub fn expired(&self, made: std::time::Instant) -> bool {
        self.flags
            .expired_before
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|before| made <= before)
    }
    /// Applies the fields present in `state`.
    pub fn apply(&self, state: &ControlState) {
        if let Some(on) = state.credits_exhausted {
            self.set_credits_exhausted(on);
        }
        if let Some(on) = state.forbidden {
            self.set_forbidden(on);
        }
        if let Some(on) = state.down {
            self.set_down(on);
        }
        if let Some(on) = state.downloads_down {
            self.set_downloads_down(on);
        }
        if let Some(on) = state.downloads_rate_limited {
            self.set_downloads_rate_limited(on);
        }
        if let Some(id) = state.polls_down_for {
            self.set_polls_down_for(Some(id).filter(|id| *id != 0));
        }
        if state.expire_results == Some(true) {
            self.expire_results();
        }
    }
    /// The current toggles.
    pub fn state(&self) -> ControlState {
        ControlState {
            credits_exhausted: Some(self.credits_exhausted()),
            forbidden: Some(self.forbidden()),
            down: Some(self.down()),
            downloads_down: Some(self.downloads_down()),
            downloads_rate_limited: Some(self.downloads_rate_limited()),
            polls_down_for: Some(self.polls_down_for().unwrap_or(0)),
            expire_results: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submit_key_ignores_key_order_but_not_values() {
        let a = serde_json::json!({"input": "x", "operations": {"a": 1, "b": {"c": 2, "d": 3}}});
        let b = serde_json::json!({"operations": {"b": {"d": 3, "c": 2}, "a": 1}, "input": "x"});
        let c = serde_json::json!({"input": "x", "operations": {"a": 2}});
        assert_eq!(submit_key(&a), submit_key(&b));
        assert_ne!(submit_key(&a), submit_key(&c));
        assert!(submit_key(&a).starts_with("x "));
    }

    #[test]
    fn batch_images_count_as_duplicates_of_async_submits() {
        let r = Recorder::default();
        r.submitted("a 1".into());
        r.batch_submitted(7, vec!["a 1".into(), "b 1".into()], 0);
        r.batch_submitted(8, vec!["b 1".into()], 0);
        let s = r.snapshot();
        assert_eq!((s.submits, s.batch_submits, s.batch_images), (1, 2, 3));
        assert_eq!(s.duplicate_submits, 2);
        assert_eq!(s.batches[&7].images, 2);
    }

    #[test]
    fn duplicates_are_counted_per_key() {
        let r = Recorder::default();
        r.submitted("a 1".into());
        r.submitted("a 1".into());
        r.submitted("a 1".into());
        r.submitted("b 1".into());
        let s = r.snapshot();
        assert_eq!((s.submits, s.duplicate_submits), (4, 2));
    }
}
