//! Alerts: messages to the webhooks where the team already talks (Slack, or any endpoint that
//! takes JSON), built from the pipeline's notices, the outbox's disk condition and the
//! activity sampler's progress.
//!
//! One router task turns what happens into [`message::Alert`]s, Alertmanager-style: one message
//! per group, not per event. A run's end is one `manifest-finished` message with its totals and
//! failure codes; failed jobs are grouped per manifest for a minute (`jobs-failed`), and a group
//! still open when its manifest finishes is folded into the `manifest-finished` message (a sink
//! that does not take `manifest-finished` gets the run's failures not yet sent to it, from the
//! run's final tally, as one `jobs-failed` message); `paused`/`resumed` follow
//! the API's refusals (401, 402, 403) and the outbox's disk (full, not writable); `stalled` is
//! sent once per stall, when work has been pending without any job changing state for the
//! sink's `stalled_after` (not while paused, which has its own message); `in-doubt` when a
//! run's jobs are held for a human; `manifest-rejected` with the first problems.
//!
//! Delivery never slows or blocks the pipeline: notices come on a broadcast channel that drops
//! for a lagging reader, and each sink has a bounded queue and its own sender
//! ([`deliver`]), which retries with backoff for the sink's `retry_for`, then drops and counts.
//! At shutdown the router sends what is still grouped and the senders get a few seconds to
//! empty their queues; nothing is persisted, so what is still queued then is dropped (counted
//! as `shutdown`).

pub mod deliver;
pub mod message;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::activity::{self, Disk};
use crate::alerts::message::{Alert, Cause, MAX_PROBLEM_LINES, MAX_STALLED_MANIFESTS};
use crate::codes::FailureCode;
use crate::config::web::{AlertEvent, AlertFormat, AlertSink};
use crate::metrics::Metrics;
use crate::pipeline::health::Refusal;
use crate::pipeline::notices::Notice;
use crate::pipeline::{self, Health};
use crate::store::ManifestId;
use crate::text::Escaped;

/// Ended runs remembered, so that a failure heard after its run's end is not sent again.
const ENDED_REMEMBERED: usize = 1024;
/// How long failed jobs of one manifest are gathered into one `jobs-failed` message.
pub const GROUP_WINDOW: Duration = Duration::from_secs(60);
/// How often the router looks at groups and stalls.
const TICK: Duration = Duration::from_secs(1);

/// Errors of the alert sinks at start.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error(
        "alert sink `{sink}`: cannot read its url_file {}: {}",
        crate::text::SecretFilePath(path),
        crate::os_error::OsCause(cause)
    )]
    UrlFile {
        sink: String,
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "alert sink `{sink}`: {} does not hold an http(s) URL on its first line; put the webhook URL there",
        Escaped::path(path)
    )]
    UrlInvalid { sink: String, path: PathBuf },
    #[error("cannot build the HTTP client of the alert sinks: {0}")]
    Client(String),
}

/// The running alerts: the router and one sender per sink.
pub struct Alerts {
    /// Tells the router to send what it holds and end.
    stop: CancellationToken,
    router: tokio::task::JoinHandle<()>,
    senders: Vec<tokio::task::JoinHandle<()>>,
    /// Each sink's name and count of messages not yet delivered or dropped.
    pending: Vec<deliver::Queue>,
    metrics: Arc<Metrics>,
}

/// Reads every sink's URL, then starts the router and the senders. Call before the pipeline
/// resumes, so no notice is missed.
pub fn start(
    sinks: &[AlertSink],
    dashboard: Option<String>,
    pipeline: &pipeline::Handle,
    activity: &activity::Handle,
    metrics: Arc<Metrics>,
) -> Result<Alerts, AlertError> {
    let client = reqwest::Client::builder()
        .timeout(deliver::REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|err| AlertError::Client(crate::daemon::error_chain(&err.without_url())))?;
    let mut routes = Vec::new();
    let mut senders = Vec::new();
    let mut pending = Vec::new();
    for sink in sinks {
        let url = read_url(sink)?;
        let (queue, task) = deliver::spawn(
            deliver::Target {
                name: sink.name.clone(),
                url,
                retry_for: sink.retry_for,
            },
            client.clone(),
            metrics.clone(),
        );
        info!(sink = %sink.name, format = ?sink.format, events = sink.events.len(), "Alert sink ready");
        pending.push(queue.clone());
        senders.push(task);
        routes.push(Route {
            sink: sink.clone(),
            queue,
            stall_sent: false,
        });
    }
    let stop = CancellationToken::new();
    let router = Router {
        routes,
        dashboard,
        groups: BTreeMap::new(),
        flushed: BTreeMap::new(),
        ended: VecDeque::new(),
        api_pause: None,
        disk: Disk::Ok,
        unpaused_at: Instant::now(),
        pipeline: pipeline.clone(),
        activity: activity.clone(),
        metrics: metrics.clone(),
    };
    let router = tokio::spawn(router.run(
        pipeline.subscribe_notices(),
        activity.subscribe_disk(),
        stop.clone(),
    ));
    Ok(Alerts {
        stop,
        router,
        senders,
        pending,
        metrics,
    })
}

impl Alerts {
    /// Shutdown: the router sends what it still groups, then the senders get `within` to empty
    /// their queues; what is left is dropped and counted as `shutdown`.
    pub async fn finish(self, within: Duration) {
        self.stop.cancel();
        let _ = self.router.await;
        let deadline = Instant::now() + within;
        for sender in self.senders {
            let abort = sender.abort_handle();
            if tokio::time::timeout_at(deadline, sender).await.is_err() {
                abort.abort();
            }
        }
        for queue in &self.pending {
            let left = queue.pending();
            if left > 0 {
                self.metrics
                    .alert_dropped(&queue.name, "shutdown", left as u64);
                warn!(sink = %queue.name, messages = left, "Alerts not delivered before shutdown were dropped");
            }
        }
    }
}

/// The start's check of a sink's `url_file`, for `validate` and a SIGHUP, which tell every
/// sink's problem (the URL itself is never printed).
pub fn check_sink(sink: &AlertSink) -> Result<(), AlertError> {
    read_url(sink).map(drop)
}

/// The webhook URL from the sink's file: its first non-empty line, http(s) only.
fn read_url(sink: &AlertSink) -> Result<reqwest::Url, AlertError> {
    let text = std::fs::read_to_string(&sink.url_file).map_err(|cause| AlertError::UrlFile {
        sink: sink.name.clone(),
        path: sink.url_file.clone(),
        cause,
    })?;
    let invalid = || AlertError::UrlInvalid {
        sink: sink.name.clone(),
        path: sink.url_file.clone(),
    };
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .ok_or_else(invalid)?;
    let url = reqwest::Url::parse(line).map_err(|_| invalid())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid());
    }
    Ok(url)
}

/// One sink as the router sees it.
struct Route {
    sink: AlertSink,
    queue: deliver::Queue,
    /// `stalled` was sent for the stall going on (re-armed by progress).
    stall_sent: bool,
}

/// Failed jobs of one manifest gathered for one message.
struct Group {
    rel: String,
    first_at: Instant,
    failures: BTreeMap<FailureCode, u64>,
}

struct Router {
    routes: Vec<Route>,
    dashboard: Option<String>,
    groups: BTreeMap<ManifestId, Group>,
    /// Failures of each unfinished run already sent in a `jobs-failed` message (a group
    /// flushed after [`GROUP_WINDOW`]), so that the run's end sends only the rest.
    flushed: BTreeMap<ManifestId, BTreeMap<FailureCode, u64>>,
    /// Runs that ended lately: a failure heard after its run's end is in that end's message.
    ended: VecDeque<ManifestId>,
    /// The API refusal going on, for the `resumed` message.
    api_pause: Option<Refusal>,
    /// The last disk condition seen.
    disk: Disk,
    /// When the last pause (API or disk) ended: a stall is counted from then at the earliest.
    unpaused_at: Instant,
    pipeline: pipeline::Handle,
    activity: activity::Handle,
    metrics: Arc<Metrics>,
}

impl Router {
    async fn run(
        mut self,
        mut notices: broadcast::Receiver<Notice>,
        mut disk: watch::Receiver<Disk>,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                notice = notices.recv() => match notice {
                    Ok(notice) => self.on_notice(notice),
                    Err(broadcast::error::RecvError::Lagged(n)) => self.lagged(n),
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                changed = disk.changed() => {
                    if changed.is_err() {
                        // The sampler has stopped (shutdown): no more disk changes.
                        std::future::pending::<()>().await;
                    }
                    let now = disk.borrow_and_update().clone();
                    self.on_disk(now);
                }
                _ = tick.tick() => {
                    self.flush_due_groups();
                    self.check_stall().await;
                }
            }
        }
        // Shutdown: what the pipeline said until now (a `run --once`'s last run) is sent.
        loop {
            match notices.try_recv() {
                Ok(notice) => self.on_notice(notice),
                Err(broadcast::error::TryRecvError::Lagged(n)) => self.lagged(n),
                Err(_) => break,
            }
        }
        let ids: Vec<ManifestId> = self.groups.keys().copied().collect();
        for id in ids {
            self.flush_group(id);
        }
    }

    fn lagged(&self, n: u64) {
        warn!(
            missed = n,
            "The alerts fell behind the pipeline's notices; some were lost"
        );
        for route in &self.routes {
            self.metrics.alert_dropped(&route.sink.name, "lagged", n);
        }
    }

    fn on_notice(&mut self, notice: Notice) {
        match notice {
            Notice::ManifestFinished {
                id,
                rel,
                counts,
                failures,
                superseded,
            } => {
                // A sink that does not take `manifest-finished` gets the run's failures not yet
                // sent to it as `jobs-failed` now. They are counted from the run's end (the
                // store's tally), not from the failures heard one by one: the run ends when the
                // store has every job's outcome, which can be before each outcome was heard.
                self.groups.remove(&id);
                let mut rest = failures.clone();
                for (code, sent) in self.flushed.remove(&id).unwrap_or_default() {
                    if let Some(n) = rest.get_mut(&code) {
                        *n = n.saturating_sub(sent);
                    }
                }
                rest.retain(|_, n| *n > 0);
                if self.ended.len() == ENDED_REMEMBERED {
                    self.ended.pop_front();
                }
                self.ended.push_back(id);
                if !rest.is_empty() {
                    let failed = Alert::JobsFailed {
                        id,
                        rel: rel.clone(),
                        failures: rest,
                    };
                    for n in 0..self.routes.len() {
                        let events = &self.routes[n].sink.events;
                        if !events.contains(&AlertEvent::ManifestFinished) {
                            self.send_to(n, &failed);
                        }
                    }
                }
                self.send(&Alert::ManifestFinished {
                    id,
                    rel,
                    counts,
                    failures,
                    superseded,
                });
            }
            Notice::ManifestRejected { rel, problems } => {
                let problems = problems
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .take(MAX_PROBLEM_LINES)
                    .map(str::to_owned)
                    .collect();
                self.send(&Alert::ManifestRejected { rel, problems });
            }
            Notice::JobFailed { id, rel, code } => {
                if self.ended.contains(&id) {
                    return;
                }
                let group = self.groups.entry(id).or_insert_with(|| Group {
                    rel,
                    first_at: Instant::now(),
                    failures: BTreeMap::new(),
                });
                *group.failures.entry(code).or_default() += 1;
            }
            Notice::InDoubtHeld { id, rel, held } => {
                self.send(&Alert::InDoubt { id, rel, held });
            }
            Notice::Paused { refusal, reason } => {
                self.api_pause = Some(refusal);
                self.send(&Alert::Paused {
                    cause: Cause::Api(refusal),
                    reason,
                });
            }
            Notice::Resumed => {
                let refusal = self.api_pause.take().unwrap_or(Refusal::Other);
                self.unpaused_at = Instant::now();
                self.send(&Alert::Resumed {
                    cause: Cause::Api(refusal),
                });
            }
        }
    }

    fn on_disk(&mut self, disk: Disk) {
        // A change of kind only: the free bytes of a full disk move with every sample.
        if disk.code() == self.disk.code() {
            self.disk = disk;
            return;
        }
        let before = std::mem::replace(&mut self.disk, disk.clone());
        match (&before, &disk) {
            (_, Disk::Full { .. }) => self.send(&Alert::Paused {
                cause: Cause::DiskFull,
                reason: disk.describe(),
            }),
            (_, Disk::Unwritable { .. }) => self.send(&Alert::Paused {
                cause: Cause::OutboxUnwritable,
                reason: disk.describe(),
            }),
            (Disk::Full { .. }, Disk::Ok) => {
                self.unpaused_at = Instant::now();
                self.send(&Alert::Resumed {
                    cause: Cause::DiskFull,
                });
            }
            (Disk::Unwritable { .. }, Disk::Ok) => {
                self.unpaused_at = Instant::now();
                self.send(&Alert::Resumed {
                    cause: Cause::OutboxUnwritable,
                });
            }
            (Disk::Ok, Disk::Ok) => {}
        }
    }

    fn flush_due_groups(&mut self) {
        let due: Vec<ManifestId> = self
            .groups
            .iter()
            .filter(|(_, g)| g.first_at.elapsed() >= GROUP_WINDOW)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.flush_group(id);
        }
    }

    fn flush_group(&mut self, id: ManifestId) {
        if let Some(group) = self.groups.remove(&id) {
            let flushed = self.flushed.entry(id).or_default();
            for (code, n) in &group.failures {
                *flushed.entry(*code).or_default() += n;
            }
            self.send(&Alert::JobsFailed {
                id,
                rel: group.rel,
                failures: group.failures,
            });
        }
    }

    async fn check_stall(&mut self) {
        let paused =
            matches!(self.pipeline.health(), Health::Paused { .. }) || self.disk != Disk::Ok;
        if paused {
            self.unpaused_at = Instant::now();
        }
        let idle = self
            .activity
            .snapshot()
            .idle_for
            .map(|idle| idle.min(self.unpaused_at.elapsed()));
        let mut due = Vec::new();
        for (n, route) in self.routes.iter_mut().enumerate() {
            match idle {
                Some(idle) if idle >= route.sink.stalled_after => {
                    if !route.stall_sent {
                        route.stall_sent = true;
                        due.push(n);
                    }
                }
                _ => route.stall_sent = false,
            }
        }
        if due.is_empty() {
            return;
        }
        let Some(idle) = idle else { return };
        let counts = self.pipeline.store().counts();
        let mut manifests = Vec::new();
        for (id, c) in counts.active.iter().filter(|(_, c)| c.open() > 0) {
            if manifests.len() == MAX_STALLED_MANIFESTS {
                break;
            }
            // A store read of one record; a failure leaves the name out.
            if let Ok(Some(m)) = self.pipeline.store().manifest(*id).await {
                manifests.push(format!("{}: {} open of {}", m.rel, c.open(), c.total()));
            }
        }
        let alert = Alert::Stalled {
            idle_secs: idle.as_secs(),
            queued: counts.totals.queued,
            in_flight: counts.totals.in_flight(),
            manifests,
        };
        for n in due {
            self.send_to(n, &alert);
        }
    }

    /// Sends `alert` to every sink that takes its event.
    fn send(&self, alert: &Alert) {
        for n in 0..self.routes.len() {
            self.send_to(n, alert);
        }
    }

    fn send_to(&self, n: usize, alert: &Alert) {
        let route = &self.routes[n];
        if !route.sink.events.contains(&alert.event()) {
            return;
        }
        let body = match route.sink.format {
            AlertFormat::Json => {
                alert.json(&crate::report::now_rfc3339(), self.dashboard.as_deref())
            }
            AlertFormat::Slack => alert.slack(self.dashboard.as_deref()),
        };
        route.queue.push(deliver::Message {
            event: alert.event(),
            body: bytes::Bytes::from(body.to_string()),
        });
    }
}
