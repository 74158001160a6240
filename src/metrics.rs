//! Prometheus metrics (prometheus-client, one explicit registry, no globals): what the pipeline
//! records as it goes, plus values read at scrape time from the store and the API client.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::claid::{ClientStats, Endpoint};
use crate::codes::{FailureCode, StateName};
use crate::store::ManifestCounts;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// A [`FailureCode`]'s one spelling.
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    pub sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertDropLabels {
    pub sink: String,
    /// `queue-full`, `gave-up`, `refused`, `lagged` or `shutdown`.
    pub reason: String,
}

/// Every metric the daemon exports. Cheap to share behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    /// Jobs by state, refreshed from the store at each scrape.
    pub jobs: Family<StateLabel, Gauge>,
    /// Manifests by outcome: `done`, `with-failures`, `superseded`, `rejected`.
    pub manifests: Family<OutcomeLabel, Counter>,
    /// Jobs failed since the start, by failure code.
    job_failures: Family<CodeLabel, Counter>,
    /// API responses by endpoint and HTTP status (`error` when no response came).
    pub api_requests: Family<RequestLabels, Counter>,
    /// API request latency by endpoint.
    pub api_latency: Family<EndpointLabel, Histogram>,
    /// Submit → DONE observed, per task.
    pub task_seconds: Histogram,
    /// Polls a job needed, observed when it is done.
    pub polls_per_job: Histogram,
    /// Calls that waited in the client's rate limiter, and for how long in all.
    pub rate_limit_waits: Counter,
    pub rate_limit_wait_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    /// 429 answers received.
    pub rate_limited: Counter,
    /// Tasks submitted and not yet finished (permits of `max_in_flight` in use).
    pub in_flight: Gauge,
    /// Submits that may have reached Claid twice (crash or lost response) and were not resolved
    /// since (a webhook or the written object adopted the lost submit), over the jobs the store
    /// holds: a gauge, it goes down when a doubt is resolved or old jobs are removed; set at
    /// scrape time through [`Metrics::set_in_doubt_events`].
    in_doubt: Gauge,
    /// Output bytes written.
    pub bytes_written: Counter,
    /// 1 while submitting is paused by a systemic API error.
    pub paused: Gauge,
    /// Alert messages delivered, by sink.
    pub alerts_sent: Family<SinkLabel, Counter>,
    /// Alert messages dropped without delivery, by sink and reason.
    pub alerts_dropped: Family<AlertDropLabels, Counter>,
    /// Webhooks by what became of them (`received`, `verified`, `rejected_signature`, …, and
    /// the dispatch's `handed`, `adopted`, `duplicate`), read at scrape time.
    webhooks: Family<OutcomeLabel, Counter>,
    /// Batching in this run: 1, or 0 once off by config or the safety valve.
    batching_enabled: Gauge,
    /// Batch submits in this run, and the images they carried; read at scrape time.
    batch_submits: Counter,
    batch_images: Counter,
    /// The receiver's counters, when webhooks are on.
    webhook_counters: Mutex<Option<std::sync::Arc<crate::webhook::WebhookCounters>>>,
    /// The last client counters folded into the families above, so scrapes add deltas only.
    folded: Mutex<ClientStats>,
    /// Held while counters are brought up to counts kept elsewhere ([`raise_to`]): two scrapes
    /// at once (two Prometheus servers) each added the same difference.
    raising: Mutex<()>,
}

/// The outcomes `claid_hotfolder_manifests_total` counts a manifest run's end under.
pub const MANIFEST_OUTCOMES: &[&str] = &["done", "with-failures", "superseded", "rejected"];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("claid_hotfolder");
        let jobs = Family::<StateLabel, Gauge>::default();
        registry.register("jobs", "Jobs in the store by state", jobs.clone());
        let manifests = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "manifests",
            "Manifest runs ended (finished or rejected), by outcome; a run a replay reopens counts again when it ends again",
            manifests.clone(),
        );
        let job_failures = Family::<CodeLabel, Counter>::default();
        registry.register(
            "job_failures",
            "Jobs failed since the start, by failure code",
            job_failures.clone(),
        );
        let api_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "api_requests",
            "Claid API responses by endpoint and status",
            api_requests.clone(),
        );
        let api_latency = Family::<EndpointLabel, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "api_request_seconds",
            "Claid API request latency",
            api_latency.clone(),
        );
        let task_seconds = Histogram::new(exponential_buckets(0.25, 2.0, 12));
        registry.register(
            "task_processing_seconds",
            "Time from submit to the task seen DONE",
            task_seconds.clone(),
        );
        let polls_per_job = Histogram::new([0.0, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0]);
        registry.register(
            "polls_per_job",
            "Polls a job needed before its result was ready",
            polls_per_job.clone(),
        );
        let rate_limit_waits = Counter::default();
        registry.register(
            "rate_limit_waits",
            "API calls that waited in the client rate limiter",
            rate_limit_waits.clone(),
        );
        let rate_limit_wait_seconds = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "rate_limit_wait_seconds",
            "Time API calls spent waiting in the client rate limiter",
            rate_limit_wait_seconds.clone(),
        );
        let rate_limited = Counter::default();
        registry.register(
            "rate_limited",
            "429 answers received from the API",
            rate_limited.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "in_flight_tasks",
            "Tasks submitted and not yet finished",
            in_flight.clone(),
        );
        let in_doubt = Gauge::default();
        registry.register(
            "in_doubt_jobs",
            "Submits that may have reached Claid twice (crash or lost response), not resolved since, over the jobs in the store",
            in_doubt.clone(),
        );
        let bytes_written = Counter::default();
        registry.register(
            "output_bytes",
            "Bytes of output images written",
            bytes_written.clone(),
        );
        let paused = Gauge::default();
        registry.register(
            "paused",
            "1 while submitting is paused by a systemic API error",
            paused.clone(),
        );
        let alerts_sent = Family::<SinkLabel, Counter>::default();
        registry.register(
            "alerts_sent",
            "Alert messages delivered, by sink",
            alerts_sent.clone(),
        );
        let alerts_dropped = Family::<AlertDropLabels, Counter>::default();
        registry.register(
            "alerts_dropped",
            "Alert messages dropped without delivery, by sink and reason",
            alerts_dropped.clone(),
        );
        let webhooks = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "webhooks",
            "Claid webhooks by what became of them (receiver and dispatch counts)",
            webhooks.clone(),
        );
        let batching_enabled = Gauge::default();
        registry.register(
            "batching_enabled",
            "1 while batch submits are on, 0 once off by config or the safety valve",
            batching_enabled.clone(),
        );
        let batch_submits = Counter::default();
        registry.register(
            "batch_submits",
            "Batch submits sent in this run",
            batch_submits.clone(),
        );
        let batch_images = Counter::default();
        registry.register(
            "batch_images",
            "Images sent in batch submits in this run",
            batch_images.clone(),
        );
        // Every outcome and failure code is shown from the start at 0, so an alert on a
        // rise (`increase(…[5m]) > 0`) sees the first one (a series that appears with its
        // first value has no earlier point to rise from).
        for outcome in MANIFEST_OUTCOMES {
            manifests
                .get_or_create(&OutcomeLabel {
                    outcome: (*outcome).to_owned(),
                })
                .inc_by(0);
        }
        for code in FailureCode::ALL {
            job_failures
                .get_or_create(&CodeLabel {
                    code: code.as_str().to_owned(),
                })
                .inc_by(0);
        }
        Metrics {
            registry,
            webhooks,
            batching_enabled,
            batch_submits,
            batch_images,
            webhook_counters: Mutex::new(None),
            jobs,
            manifests,
            job_failures,
            api_requests,
            api_latency,
            task_seconds,
            polls_per_job,
            rate_limit_waits,
            rate_limit_wait_seconds,
            rate_limited,
            in_flight,
            in_doubt,
            bytes_written,
            paused,
            alerts_sent,
            alerts_dropped,
            folded: Mutex::new(ClientStats::default()),
            raising: Mutex::new(()),
        }
    }

    /// Reads the webhook receiver's counters at every scrape.
    pub fn watch_webhooks(&self, counters: std::sync::Arc<crate::webhook::WebhookCounters>) {
        *self
            .webhook_counters
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(counters);
    }

    /// Batching's state for `/metrics`, read at scrape time.
    pub fn set_batching(&self, view: &crate::pipeline::batch::BatchingView) {
        let _raising = self.raising.lock().unwrap_or_else(|e| e.into_inner());
        self.batching_enabled.set(i64::from(view.enabled));
        raise_to(&self.batch_submits, view.batches);
        raise_to(&self.batch_images, view.images);
    }

    /// The store's count of submits that may have reached Claid twice, read at scrape time.
    pub fn set_in_doubt_events(&self, total: u64) {
        self.in_doubt.set(i64::try_from(total).unwrap_or(i64::MAX));
    }

    /// Sets the webhook counters from the receiver's and the dispatch's counts.
    pub fn set_webhooks(&self, dispatch: &crate::pipeline::dispatch::DispatchStats) {
        let receiver = self
            .webhook_counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|c| c.snapshot());
        let Some(r) = receiver else { return };
        let _raising = self.raising.lock().unwrap_or_else(|e| e.into_inner());
        for (outcome, n) in [
            ("received", r.received),
            ("verified", r.verified),
            ("rejected_signature", r.rejected_signature),
            ("rejected_body", r.rejected_body),
            ("rejected_too_large", r.rejected_too_large),
            ("rejected_incomplete", r.rejected_incomplete),
            ("rejected_route", r.rejected_route),
            ("refused_busy", r.refused_busy),
            ("sink_busy", r.sink_busy),
            ("unknown_task", r.unknown_task),
            ("handed", dispatch.handed),
            ("adopted", dispatch.adopted),
            ("duplicate", dispatch.duplicates),
            ("not_final", dispatch.not_final),
        ] {
            raise_to(
                &self.webhooks.get_or_create(&OutcomeLabel {
                    outcome: outcome.to_owned(),
                }),
                n,
            );
        }
    }

    /// Records one API answer's latency (the client's observer).
    pub fn observe_latency(&self, endpoint: Endpoint, latency: Duration) {
        self.api_latency
            .get_or_create(&EndpointLabel {
                endpoint: endpoint.as_str().to_owned(),
            })
            .observe(latency.as_secs_f64());
    }

    /// Folds the client's counters into the families (only what changed since the last call).
    pub fn fold_client(&self, now: &ClientStats) {
        let mut last = self.folded.lock().unwrap_or_else(|e| e.into_inner());
        for ((endpoint, status), n) in &now.responses {
            let before = last
                .responses
                .get(&(*endpoint, *status))
                .copied()
                .unwrap_or(0);
            let labels = RequestLabels {
                endpoint: endpoint.as_str().to_owned(),
                status: status.to_string(),
            };
            self.api_requests
                .get_or_create(&labels)
                .inc_by(n.saturating_sub(before));
        }
        for (endpoint, n) in &now.transport_errors {
            let before = last.transport_errors.get(endpoint).copied().unwrap_or(0);
            let labels = RequestLabels {
                endpoint: endpoint.as_str().to_owned(),
                status: "error".to_owned(),
            };
            self.api_requests
                .get_or_create(&labels)
                .inc_by(n.saturating_sub(before));
        }
        self.rate_limit_waits
            .inc_by(now.limiter_waits.saturating_sub(last.limiter_waits));
        let waited = now
            .limiter_wait_total
            .saturating_sub(last.limiter_wait_total);
        self.rate_limit_wait_seconds.inc_by(waited.as_secs_f64());
        self.rate_limited
            .inc_by(now.rate_limited.saturating_sub(last.rate_limited));
        *last = now.clone();
    }

    /// Counts a job that failed with `code`.
    pub fn job_failed(&self, code: FailureCode) {
        self.job_failures
            .get_or_create(&CodeLabel {
                code: code.as_str().to_owned(),
            })
            .inc();
    }

    /// Sets the jobs-by-state gauges from the store's counts.
    pub fn set_job_counts(&self, counts: &ManifestCounts) {
        for state in StateName::ALL {
            self.jobs
                .get_or_create(&StateLabel {
                    state: state.as_str().to_owned(),
                })
                .set(counts.of(state) as i64);
        }
    }

    /// Counts `n` alert messages of `sink` dropped for `reason`.
    pub fn alert_dropped(&self, sink: &str, reason: &str, n: u64) {
        self.alerts_dropped
            .get_or_create(&AlertDropLabels {
                sink: sink.to_owned(),
                reason: reason.to_owned(),
            })
            .inc_by(n);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

/// Brings a counter up to `total`, a count kept elsewhere that only grows (a counter never goes
/// down: a smaller `total` changes nothing). Called under [`Metrics::raising`].
fn raise_to(counter: &Counter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_manifest_outcome_and_failure_code_is_shown_at_zero_from_the_start() {
        let text = Metrics::new().encode();
        for outcome in MANIFEST_OUTCOMES {
            let line = format!("claid_hotfolder_manifests_total{{outcome=\"{outcome}\"}} 0");
            assert!(text.contains(&line), "no {line} in:\n{text}");
        }
        for code in FailureCode::ALL {
            let line = format!(
                "claid_hotfolder_job_failures_total{{code=\"{}\"}} 0",
                code.as_str()
            );
            assert!(text.contains(&line), "no {line} in:\n{text}");
        }
    }
}
