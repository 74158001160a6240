//! What the emulator saw (`Stats`, also served at `GET /_emulator/stats`) and the runtime
//! toggles (`Control`, also `POST /_emulator/control`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Exact counters; tests and benchmarks use them to count duplicates and wasted calls.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
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
    /// Successful tmp_url downloads.
    pub downloads: u64,
    /// 429 answers sent.
    pub rate_limited: u64,
    /// 5xx answers sent (injected faults and `down`).
    pub errors_5xx: u64,
    /// Submits whose task was created but whose connection was closed without a response.
    pub dropped_responses: u64,
    /// Async tasks that ended in ERROR.
    pub tasks_errored: u64,
    /// Most API requests in flight at once.
    pub max_concurrent: u64,
    /// API requests received (under `/v1` or `/v1-beta1`), whatever their outcome.
    pub requests: u64,
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
    }
    /// The current toggles.
    pub fn state(&self) -> ControlState {
        ControlState {
            credits_exhausted: Some(self.credits_exhausted()),
            forbidden: Some(self.forbidden()),
            down: Some(self.down()),
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
