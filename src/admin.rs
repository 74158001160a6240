//! The admin API: HTTP over the Unix socket `admin.socket` (mode 0660, created at start and
//! removed on exit) with `GET /healthz`, `GET /status`, `GET /jobs`, `POST /replay` and
//! `GET /metrics`, and `/metrics` alone over TCP when `admin.metrics_listen` is set.
//!
//! The server is bounded ([`crate::http_server`], shared with the webhook receiver), so no
//! number of idle or slow clients can exhaust the daemon's file descriptors or stop
//! `/healthz`: at most [`MAX_CONNECTIONS`] connections per listener are served at once (at the
//! cap the one idle the longest makes room; when none is idle, more are answered `503` and
//! closed at once), a client has [`HEADER_TIMEOUT`] to send a request's
//! headers (also the idle keep-alive timeout) and [`BODY_TIMEOUT`] to send its body.
//!
//! The views (`StatusView`, `JobView`) and the replay selection are plain functions over the
//! store, so `status`, `jobs` and `replay` print the same thing whether they asked the running
//! daemon over the socket or opened the store themselves because no daemon runs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{error, info, warn};

use crate::codes::StateName;
use crate::http_server::{self, Accept, Bounds};
use crate::metrics::Metrics;
use crate::os_error::OsCause;
use crate::pipeline::{self, Health};
use crate::store::records::{JobState, JobV1, ManifestCounts, ManifestV1};
use crate::store::{JobId, Store, StoreError};
use crate::text::Escaped;

/// Errors of the admin socket, server and client side.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "cannot create the admin socket {}: {}",
        Escaped::path(path),
        OsCause(cause)
    )]
    Bind {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "cannot listen for metrics on {addr} (`admin.metrics_listen`): {}; another process (or the webhook receiver, or the dashboard) may hold the address: choose another one",
        OsCause(cause)
    )]
    MetricsBind {
        addr: SocketAddr,
        cause: std::io::Error,
    },
    #[error(
        "another daemon answers on the admin socket {}: each daemon needs its own `admin.socket` (and its own state, inbox and outbox); set another path in this config",
        Escaped::path(path)
    )]
    Taken { path: PathBuf },
    #[error(
        "`admin.socket` names {}, which is not a socket: it is left as it is; set `admin.socket` to a path where nothing is (the package's is /run/claid-hotfolder/admin.sock)",
        Escaped::path(path)
    )]
    NotASocket { path: PathBuf },
    #[error("no daemon answers on {}", Escaped::path(path))]
    NotRunning { path: PathBuf },
    #[error(
        "permission denied on the admin socket {}: run as the service user or a member of its group",
        Escaped::path(path)
    )]
    Denied { path: PathBuf },
    #[error(
        "admin request to {} failed: {}",
        Escaped::path(path),
        Escaped::str(message)
    )]
    Request { path: PathBuf, message: String },
    #[error(
        "the daemon took the connection on its admin socket {} but did not answer in {} s: it may be stuck (look at `journalctl -u claid-hotfolder` and `systemctl status claid-hotfolder`; a restart resumes every job from the store)",
        Escaped::path(path),
        secs
    )]
    Silent { path: PathBuf, secs: u64 },
}

/// How long `status`, `jobs` and the other reads wait for the daemon's answer once it took
/// the connection.
pub const READ_ANSWER_WITHIN: Duration = Duration::from_secs(30);
/// How long a `replay` waits (it writes every job it requeues).
pub const WRITE_ANSWER_WITHIN: Duration = Duration::from_secs(300);

/// What `status` shows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusView {
    /// The running daemon, or `None` when the store was read directly.
    pub daemon: Option<DaemonView>,
    pub manifests: Vec<ManifestView>,
    /// Ended runs older than the newest [`STATUS_RECENT`] exist and are not listed (absent
    /// from older daemons).
    #[serde(default)]
    pub older_runs_not_listed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DaemonView {
    /// `ok`, `paused` (a refused key or credits, or outputs that cannot be written) or
    /// `failing` (the API or a bucket has not answered for `OUTAGE_AFTER`).
    pub health: String,
    pub reason: Option<String>,
    pub in_flight: usize,
    /// Jobs whose submit answer was lost (or that a crash cut short), waiting for a webhook
    /// to say which task they became; a manifest's row counts them in flight (absent from
    /// older daemons).
    #[serde(default)]
    pub awaiting_webhook: usize,
    pub queued: usize,
    pub uptime_secs: u64,
    /// Whether batches are on, and the sizes chosen (absent from older daemons).
    #[serde(default)]
    pub batching: Option<crate::pipeline::batch::BatchingView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestView {
    pub id: u64,
    pub manifest: String,
    pub finished: bool,
    pub total: u64,
    pub done: u64,
    pub failed: u64,
    pub in_flight: u64,
    pub queued: u64,
    pub in_doubt: u64,
    /// Jobs a newer version of the manifest took over before they were submitted.
    #[serde(default)]
    pub superseded: u64,
    /// Images finished per minute since this daemon started on the manifest (live only).
    pub images_per_minute: Option<f64>,
    /// Seconds until the manifest is done at that rate (live only).
    pub eta_secs: Option<u64>,
    /// When the run was taken in (ms since the epoch): tells two runs of one file apart
    /// (absent from older daemons).
    #[serde(default)]
    pub registered_at_ms: Option<u64>,
}

/// One row of `jobs`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobView {
    pub id: u64,
    pub manifest: String,
    pub input: String,
    pub output: String,
    pub state: String,
    pub attempts: u32,
    pub in_doubt: u32,
    pub task_id: Option<u64>,
    pub detail: String,
}

/// Which jobs `replay` requeues; exactly one selector, or `failed`/`in_doubt` with `since`.
/// Unknown keys are refused (422): a misspelled `dry_run` requeued, and billed, for real.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    #[serde(default)]
    pub failed: bool,
    #[serde(default)]
    pub in_doubt: bool,
    #[serde(default)]
    pub manifest: Option<String>,
    #[serde(default)]
    pub job: Option<u64>,
    /// Only jobs whose last change is at or after this time (ms since the epoch).
    #[serde(default)]
    pub since_ms: Option<u64>,
    /// Only say which jobs would be requeued (in `preview`); change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReplayAnswer {
    pub requeued: usize,
    /// Of those requeued, the jobs Claid had billed already (see [`JobState::billed`]): each
    /// is billed again when it runs. Absent in an older daemon's answer.
    #[serde(default)]
    pub billed_again: usize,
    /// Of those requeued, the jobs whose billed result an earlier run could not write: their
    /// result is fetched again from Claid (which keeps it a day), not billed again. Absent in
    /// an older daemon's answer.
    #[serde(default)]
    pub refetched: usize,
    /// Of those requeued, the jobs held in doubt: Claid may have taken their submit, and
    /// sending them again may bill them twice. Absent in an older daemon's answer.
    #[serde(default)]
    pub in_doubt_again: usize,
    pub jobs: Vec<u64>,
    /// With `dry_run`: the jobs that would be requeued.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preview: Vec<ReplayPreview>,
    /// Runs not replayed because another active manifest writes one of their outputs or
    /// reports now, one sentence each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
}

/// One job a `replay --dry-run` would requeue.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReplayPreview {
    pub id: u64,
    /// Its state now (`done`, `failed`, `in-doubt`).
    pub state: String,
    pub input: String,
    /// Outbox-relative output.
    pub output: String,
    /// Claid made this image's result already, or may still make it: the job is done, or failed after Claid accepted its task for a reason of this side or of time
    /// (`task-timeout`, a download or a write that failed). Sending it again is billed again.
    /// False for a result fetched again (`refetch`).
    #[serde(default)]
    pub billed: bool,
    /// Claid made and billed this image's result, and an earlier run could not write it: the
    /// replay fetches that result again (Claid keeps it a day; a storage output's object stays
    /// in its bucket), with no new bill.
    #[serde(default)]
    pub refetch: bool,
}

/// The jobs `ids` as a dry run shows them.
pub async fn replay_preview(
    store: &Store,
    ids: &[JobId],
) -> Result<Vec<ReplayPreview>, ReplayError> {
    let mut preview = Vec::with_capacity(ids.len());
    let now = crate::store::now_ms();
    for id in ids {
        if let Some(job) = store.job(*id).await? {
            preview.push(ReplayPreview {
                id: *id,
                state: job.state.kind().to_owned(),
                input: crate::text::redact_credentials(&job.input).into_owned(),
                output: job.output_rel.clone(),
                billed: job.state.billed_again_by_replay(now),
                refetch: job.state.refetchable(now).is_some(),
            });
        }
    }
    Ok(preview)
}

/// Filters of `jobs`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JobsQuery {
    pub state: Option<String>,
    pub manifest: Option<String>,
}

/// How many ended runs `status` lists besides every active one.
pub const STATUS_RECENT: usize = 50;

/// Per-manifest progress from the store's counters (every run not ended, plus the newest
/// [`STATUS_RECENT`] others), enriched with live rates when a pipeline runs. Costs
/// O(runs active + STATUS_RECENT), whatever the history.
pub async fn status_view(
    store: &Store,
    live: Option<&pipeline::Handle>,
) -> Result<StatusView, StoreError> {
    let counts = store.counts();
    let rates: BTreeMap<u64, f64> = live.map(|p| p.rates()).unwrap_or_default();
    let mut runs: BTreeMap<u64, (ManifestV1, ManifestCounts)> = BTreeMap::new();
    for (id, c) in &counts.active {
        if let Some(m) = store.manifest(*id).await? {
            runs.insert(*id, (m, *c));
        }
    }
    // Beyond the newest STATUS_RECENT records, enough more to pass every active run (listed
    // anyway): a finished run among them is one left out.
    let mut recent = store
        .recent_manifests(STATUS_RECENT + counts.active.len() + 1)
        .await?;
    let older = recent.split_off(recent.len().min(STATUS_RECENT));
    let older_runs_not_listed = older.iter().any(|(_, m)| m.counts.is_some());
    for (id, m) in recent {
        if let Some(c) = m.counts {
            runs.entry(id).or_insert((m, c));
        }
    }
    // No image is submitted while the daemon is paused: no time of arrival can be told (the
    // rate of the minutes before the pause gave one).
    let paused = live.is_some_and(|p| {
        matches!(p.health(), Health::Paused { .. }) || p.writes_blocked_everywhere().is_some()
    });
    let manifests = runs
        .into_iter()
        .map(|(id, (m, c))| {
            let remaining = c.open();
            let (images_per_minute, eta_secs) = match rates.get(&id) {
                Some(per_min) if paused => (Some(*per_min), None),
                Some(per_min) if *per_min > 0.0 => (
                    Some(*per_min),
                    Some((remaining as f64 / per_min * 60.0).round() as u64),
                ),
                Some(_) => (Some(0.0), None),
                None => (None, None),
            };
            ManifestView {
                id,
                manifest: m.rel,
                finished: m.state.is_ended(),
                total: c.total(),
                done: c.done,
                failed: c.failed,
                in_flight: c.in_flight(),
                queued: c.queued,
                in_doubt: c.in_doubt,
                superseded: c.superseded,
                images_per_minute,
                eta_secs,
                registered_at_ms: Some(m.registered_at_ms),
            }
        })
        .collect::<Vec<ManifestView>>();
    // The daemon's counts are the rows' (jobs by state), so one answer never contradicts
    // itself: the `max_in_flight` slots held by jobs waiting for a turn are no images in
    // flight.
    let active = manifests.iter().filter(|m| !m.finished);
    let (rows_in_flight, rows_queued) =
        active.fold((0u64, 0u64), |(f, q), m| (f + m.in_flight, q + m.queued));
    let daemon = live.map(|p| {
        let (health, reason) = match (p.health(), p.writes_blocked_everywhere(), p.folder_held()) {
            (Health::Paused { reason, .. }, _, _) => ("paused".to_owned(), Some(reason)),
            (Health::Healthy, Some(why), _) => (
                "paused".to_owned(),
                Some(format!("{}; new images wait", why.describe())),
            ),
            (Health::Healthy, None, Some((folder, why))) => (
                "failing".to_owned(),
                Some(format!(
                    "the outbox folder {} cannot be written ({why}); images whose output goes there wait, the others go on",
                    Escaped::path(&folder)
                )),
            ),
            (Health::Healthy, None, None) => match (p.outage(), p.store().write_failing()) {
                (_, Some((for_, why))) => (
                    "failing".to_owned(),
                    Some(format!(
                        "the job store cannot be written: {why} (for {} s); results wait to be recorded",
                        for_.as_secs()
                    )),
                ),
                (Some((for_, why)), None) => (
                    "failing".to_owned(),
                    Some(format!("{why} (for {} s)", for_.as_secs())),
                ),
                (None, None) => match p.inbox_problem() {
                    Some((for_, why)) => (
                        "failing".to_owned(),
                        Some(format!("{why} (for {} s)", for_.as_secs())),
                    ),
                    None => ("ok".to_owned(), None),
                },
            },
        };
        DaemonView {
            health,
            reason,
            in_flight: usize::try_from(rows_in_flight).unwrap_or(usize::MAX),
            awaiting_webhook: p.awaiting_adoption(),
            queued: usize::try_from(rows_queued).unwrap_or(usize::MAX),
            uptime_secs: p.uptime().as_secs(),
            batching: Some(p.batching()),
        }
    });
    Ok(StatusView {
        daemon,
        manifests,
        older_runs_not_listed,
    })
}

/// A job state's short name, as `jobs --state` takes it.
pub fn state_name(state: &JobState) -> &'static str {
    state.kind()
}

/// The jobs matching `query`, in manifest order.
pub async fn jobs_view(store: &Store, query: &JobsQuery) -> Result<Vec<JobView>, StoreError> {
    let query = query.clone();
    store
        .read(move |reader| {
            let mut out = Vec::new();
            for (mid, m) in reader.manifests()? {
                if query.manifest.as_deref().is_some_and(|rel| rel != m.rel) {
                    continue;
                }
                reader.for_each_job_of_manifest(mid, |id, job| {
                    let state = state_name(&job.state);
                    if query
                        .state
                        .as_deref()
                        .is_none_or(|s| StateName::parse(s).is_some_and(|s| s.as_str() == state))
                    {
                        out.push(job_view(id, &m.rel, &job));
                    }
                    Ok::<_, StoreError>(())
                })?;
            }
            Ok(out)
        })
        .await
}

fn job_view(id: JobId, manifest: &str, job: &JobV1) -> JobView {
    let (task_id, detail) = match &job.state {
        JobState::Failed { code, message, .. } => (
            None,
            format!("{code}: {}", crate::text::redact_urls_in(message)),
        ),
        JobState::Done {
            path,
            task_id,
            unchanged,
            ..
        } => (
            *task_id,
            if *unchanged {
                format!("unchanged {path}")
            } else {
                path.clone()
            },
        ),
        JobState::Submitted { task_id, .. } => (Some(*task_id), String::new()),
        JobState::Downloading { task_id, .. } => (*task_id, String::new()),
        // Why it is held, as the report says it (`jobs --state in-doubt` showed nothing).
        JobState::InDoubt { .. } => (
            None,
            crate::report::in_doubt_reason(job)
                .map(|why| crate::text::redact_urls_in(&why).into_owned())
                .unwrap_or_default(),
        ),
        _ => (None, String::new()),
    };
    JobView {
        id,
        manifest: manifest.to_owned(),
        // Who reads the admin socket or the page need not read the manifest's secrets.
        input: crate::text::redact_credentials(&job.input).into_owned(),
        output: job.output_rel.clone(),
        state: state_name(&job.state).to_owned(),
        attempts: job.attempts,
        in_doubt: job.in_doubt,
        task_id,
        detail,
    }
}

/// Problems with a replay request that the operator must fix.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("choose what to replay: --failed, --in-doubt, --manifest F or --job ID")]
    NothingSelected,
    #[error("choose one of --failed, --in-doubt, --manifest F and --job ID, not several")]
    SeveralSelected,
    #[error("no job {0} in the store (see `jobs`)")]
    UnknownJob(u64),
    #[error("job {0} is still under way ({1}); it finishes on its own")]
    UnderWay(u64, &'static str),
    #[error("no manifest `{0}` in the store (give its path relative to the inbox; see `status`)")]
    UnknownManifest(String),
    #[error(
        "job {0} belongs to an earlier run of its manifest (the file was saved or dropped again since); the newer run stands for its images and its report (see `status`), so it is not replayed"
    )]
    Superseded(u64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Whether run `id` no longer stands for its file: superseded by a version saved while it ran
/// (or draining for one saved while it runs), or followed by a newer run of the same file.
/// Its jobs are then never replayed: their images belong to the newer run (replaying would
/// bill what that run delivered or dropped, and write the older run's report over the newer
/// one's).
pub async fn run_replaced(store: &Store, id: u64, m: &ManifestV1) -> Result<bool, StoreError> {
    Ok(matches!(
        m.state,
        crate::store::ManifestState::Superseded { .. }
            | crate::store::ManifestState::Draining { .. }
    ) || store
        .latest_run(&m.rel)
        .await?
        .is_some_and(|(latest, _)| latest != id))
}

/// The jobs a replay request selects: failed or in-doubt ones, every job of a manifest, or one job.
pub async fn select_replay(store: &Store, req: &ReplayRequest) -> Result<Vec<JobId>, ReplayError> {
    let selectors = [
        req.failed,
        req.in_doubt,
        req.manifest.is_some(),
        req.job.is_some(),
    ];
    if selectors.iter().filter(|on| **on).count() > 1 {
        return Err(ReplayError::SeveralSelected);
    }
    if let Some(id) = req.job {
        let replaced = match store.job(id).await? {
            Some(job) => match store.manifest(job.manifest).await? {
                Some(m) => run_replaced(store, job.manifest, &m).await?,
                None => false,
            },
            None => false,
        };
        return match store.job(id).await? {
            Some(_) if replaced => Err(ReplayError::Superseded(id)),
            Some(job) if job.state.is_replayable() => Ok(vec![id]),
            Some(job) => Err(ReplayError::UnderWay(id, state_name(&job.state))),
            None => Err(ReplayError::UnknownJob(id)),
        };
    }
    if !req.failed && !req.in_doubt && req.manifest.is_none() {
        return Err(ReplayError::NothingSelected);
    }
    let mut req = req.clone();
    store
        .read(move |reader| {
            let manifests = reader.manifests()?;
            if let Some(rel) = &req.manifest
                && !manifests.iter().any(|(_, m)| &m.rel == rel)
            {
                // A name copied from `status` or the log, where its control characters and
                // backslashes are escaped (`new\nline.yaml`): the manifest it stands for.
                let plain = crate::text::unescape(rel)
                    .filter(|plain| manifests.iter().any(|(_, m)| &m.rel == plain));
                match plain {
                    Some(plain) => req.manifest = Some(plain),
                    None => return Err(ReplayError::UnknownManifest(rel.clone())),
                }
            }
            // The newest run of each file (runs come oldest first).
            let latest: std::collections::HashMap<&str, u64> = manifests
                .iter()
                .map(|(mid, m)| (m.rel.as_str(), *mid))
                .collect();
            let mut chosen = Vec::new();
            for (mid, m) in &manifests {
                if req.manifest.as_ref().is_some_and(|rel| *rel != m.rel) {
                    continue;
                }
                // A run whose manifest was saved (or dropped) again: its images belong to the
                // newer run (replaying them would bill what that version delivered or dropped,
                // and write the older run's report over the newer one's).
                if matches!(m.state, crate::store::ManifestState::Superseded { .. })
                    || latest.get(m.rel.as_str()) != Some(mid)
                {
                    continue;
                }
                let mid = *mid;
                reader.for_each_job_of_manifest(mid, |id, job| {
                    if req.since_ms.is_some_and(|since| job.updated_at_ms < since) {
                        return Ok::<_, StoreError>(());
                    }
                    let pick = match &job.state {
                        JobState::Failed { .. } => req.failed || req.manifest.is_some(),
                        JobState::InDoubt { .. } => req.in_doubt || req.manifest.is_some(),
                        JobState::Done { .. } => {
                            req.manifest.is_some() && !req.failed && !req.in_doubt
                        }
                        // Jobs still under way are left alone: they finish on their own.
                        _ => false,
                    };
                    if pick {
                        chosen.push(id);
                    }
                    Ok(())
                })?;
            }
            Ok(chosen)
        })
        .await
}

/// Requeues the selected jobs in a store no daemon holds; they run at the next start.
pub async fn replay_offline(
    store: &Store,
    folders: (&std::path::Path, &std::path::Path),
    req: &ReplayRequest,
) -> Result<ReplayAnswer, ReplayError> {
    let ids = select_replay(store, req).await?;
    if req.dry_run {
        return dry_run_answer(store, folders.0, ids).await;
    }
    let (replayed, runs) = pipeline::requeue_for_replay(store, folders, ids).await?;
    Ok(ReplayAnswer {
        requeued: replayed.requeued,
        billed_again: replayed.billed_again,
        refetched: replayed.refetched,
        in_doubt_again: replayed.in_doubt_again,
        jobs: runs.into_iter().flat_map(|(_, _, ids, _)| ids).collect(),
        preview: Vec::new(),
        refused: replayed.refused,
    })
}

/// What a replay of `ids` would do, changing nothing: the jobs it would requeue (their
/// preview), and those it would refuse (a local input no longer in `inbox`), each told.
async fn dry_run_answer(
    store: &Store,
    inbox: &std::path::Path,
    ids: Vec<JobId>,
) -> Result<ReplayAnswer, ReplayError> {
    let mut refused = Vec::new();
    let mut kept = Vec::with_capacity(ids.len());
    for id in ids {
        match store.job(id).await? {
            Some(job) if job.state.is_replayable() => {
                match pipeline::replay_refusal(inbox, id, &job).await {
                    Some(why) => refused.push(why),
                    None => kept.push(id),
                }
            }
            _ => kept.push(id),
        }
    }
    Ok(ReplayAnswer {
        requeued: 0,
        billed_again: 0,
        refetched: 0,
        in_doubt_again: 0,
        preview: replay_preview(store, &kept).await?,
        jobs: kept,
        refused,
    })
}

/// What the admin handlers share.
#[derive(Clone)]
pub struct AdminState {
    pub pipeline: pipeline::Handle,
    pub metrics: Arc<Metrics>,
}

/// The admin router (socket): every endpoint.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .route("/jobs", get(jobs))
        .route("/replay", post(replay))
        .route("/replay/preview", post(replay_preview_route))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// The admin socket, bound: what [`serve_socket`] serves, and the file it removes on exit
/// (only if that is still this socket: another daemon may have been given the same path).
pub struct BoundSocket {
    listener: tokio::net::UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file this daemon bound.
    identity: Option<(u64, u64)>,
}

/// Only a socket is ever removed: a path that names something else (a typo pointing at the
/// config or the key file) is refused, never deleted. Also asked by `validate`.
pub fn not_a_socket(path: &Path) -> Option<AdminError> {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path)
        .ok()
        .filter(|meta| !meta.file_type().is_socket())
        .map(|_| AdminError::NotASocket {
            path: path.to_path_buf(),
        })
}

/// Binds the admin socket at `path` (before anything runs: a socket that cannot be bound stops
/// the start). A file left there by a daemon that was killed is removed first; one that a live
/// process answers on is not: another daemon was given the same `admin.socket`, and taking
/// it over would send this one's `status` and `replay` to the other (`AdminError::Taken`).
pub fn bind_socket(path: PathBuf) -> Result<BoundSocket, AdminError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|cause| AdminError::Bind {
            path: path.clone(),
            cause,
        })?;
    }
    if std::os::unix::net::UnixStream::connect(&path).is_ok() {
        return Err(AdminError::Taken { path });
    }
    if let Some(err) = not_a_socket(&path) {
        return Err(err);
    }
    match std::fs::remove_file(&path) {
        Ok(()) => info!(socket = %Escaped::path(&path), "Removed a stale admin socket"),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(cause) => return Err(AdminError::Bind { path, cause }),
    }
    let listener = bind_0660(&path).map_err(|cause| AdminError::Bind {
        path: path.clone(),
        cause,
    })?;
    let identity = socket_identity(&path);
    Ok(BoundSocket {
        listener,
        path,
        identity,
    })
}

fn socket_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|meta| (meta.dev(), meta.ino()))
}

/// Serves the admin API on `socket` until `cancel`; the socket file is removed on exit when it
/// is still the one bound.
pub async fn serve_socket(
    socket: BoundSocket,
    state: AdminState,
    cancel: CancellationToken,
) -> Result<(), AdminError> {
    let BoundSocket {
        listener,
        path,
        identity,
    } = socket;
    info!(socket = %Escaped::path(&path), "Admin socket listening");
    serve_bounded(listener, router(state), cancel).await;
    if identity.is_some() && socket_identity(&path) != identity {
        warn!(socket = %Escaped::path(&path), "The admin socket's file is no longer this daemon's; left where it is");
        return Ok(());
    }
    if let Err(err) = std::fs::remove_file(&path) {
        warn!(error = %OsCause(&err), socket = %Escaped::path(&path), "Cannot remove the admin socket");
    }
    Ok(())
}

/// Binds a Unix socket at `path` that appears there already with mode 0660: it is bound under
/// a temporary name beside it, given its mode, then renamed into place, so no client ever finds
/// it with the umask's mode (a client of the group racing the start would be refused, and a
/// check of the mode could see the wrong one). Where the temporary name would be too long for
/// a socket address, it is bound in place and its mode set right after.
fn bind_0660(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    let mode = std::fs::Permissions::from_mode(0o660);
    let dir = path.parent().unwrap_or(Path::new("."));
    let temporary = dir.join(format!(".admin-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    match tokio::net::UnixListener::bind(&temporary) {
        Ok(listener) => {
            let placed = std::fs::set_permissions(&temporary, mode)
                .and_then(|()| std::fs::rename(&temporary, path));
            if let Err(err) = placed {
                let _ = std::fs::remove_file(&temporary);
                return Err(err);
            }
            Ok(listener)
        }
        Err(err) if err.kind() == std::io::ErrorKind::InvalidInput => {
            let listener = tokio::net::UnixListener::bind(path)?;
            std::fs::set_permissions(path, mode)?;
            Ok(listener)
        }
        Err(err) => Err(err),
    }
}

/// Binds `admin.metrics_listen` (before anything runs: a metrics listener that cannot listen
/// stops the start, as the dashboard's and the webhook receiver's do).
pub async fn bind_metrics(addr: SocketAddr) -> Result<tokio::net::TcpListener, AdminError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|cause| AdminError::MetricsBind { addr, cause })
}

/// Serves `/metrics` (and `/healthz`) over TCP on `listener` until `cancel`.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    state: AdminState,
    cancel: CancellationToken,
) -> Result<(), AdminError> {
    if let Ok(addr) = listener.local_addr() {
        info!(addr = %addr, "Metrics listening");
    }
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(state);
    serve_bounded(listener, app, cancel).await;
    Ok(())
}

/// Most connections served at once, per listener (the socket and the metrics port each). More
/// are accepted only to be answered `503` and closed at once, so idle clients can hold at
/// most this many file descriptors, and the kernel's accept queue is drained, not left full.
pub const MAX_CONNECTIONS: usize = 32;
/// How long a client has to send a request's headers: from the connection, and again from the
/// end of each response while a kept-alive connection sits idle (so this is also the idle
/// timeout).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request's body may take to arrive once its headers are in.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request body read (a replay request is a few dozen bytes).
pub const MAX_REQUEST_BODY: usize = 64 * 1024;
/// The admin listeners' bounds.
const BOUNDS: Bounds = Bounds {
    name: "admin",
    max_connections: MAX_CONNECTIONS,
    header_timeout: HEADER_TIMEOUT,
    body_timeout: BODY_TIMEOUT,
    max_body: MAX_REQUEST_BODY,
    // How long shutdown waits for requests in progress (idle connections close at once).
    drain: Duration::from_secs(5),
};

/// Serves `app` on `listener` within [`BOUNDS`] until `cancel`.
async fn serve_bounded(listener: impl Accept, app: Router, cancel: CancellationToken) {
    let handler = move |req: Request<Incoming>| handle(app.clone(), req);
    http_server::serve(listener, BOUNDS, handler, cancel).await;
}

/// Reads the request body (bounded in time and size), then routes the request.
async fn handle(app: Router, req: Request<Incoming>) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match http_server::read_body(body, &BOUNDS).await {
        Ok(bytes) => bytes,
        Err(err) => return err.response(),
    };
    let req = Request::from_parts(parts, axum::body::Body::from(bytes));
    match app.oneshot(req).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// 200 `ok`; 503 `paused` while a refusal pauses submitting (401/402/403, a wrong
/// `api.base_url`, a TLS handshake that fails: [`pipeline::health::Refusal`]); 503 `failing` while the API
/// or a bucket has not answered for [`pipeline::health::OUTAGE_AFTER`] or more, or outputs cannot be written
/// (the daemon waits these out and loses nothing, but no work moves).
async fn healthz(State(state): State<AdminState>) -> Response {
    let unavailable = |body: serde_json::Value| {
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
    };
    if let Health::Paused { reason, .. } = state.pipeline.health() {
        return unavailable(serde_json::json!({"status": "paused", "reason": reason}));
    }
    if let Some((for_, why)) = state.pipeline.outage() {
        return unavailable(serde_json::json!({
            "status": "failing",
            "reason": why,
            "for_seconds": for_.as_secs(),
        }));
    }
    if let Some((for_, why)) = state.pipeline.writes_blocked_for() {
        return unavailable(serde_json::json!({
            "status": "failing",
            "reason": why.describe(),
            "for_seconds": for_.as_secs(),
        }));
    }
    if let Some((for_, why)) = state.pipeline.store().write_failing() {
        return unavailable(serde_json::json!({
            "status": "failing",
            "reason": format!("the job store cannot be written: {why}"),
            "for_seconds": for_.as_secs(),
        }));
    }
    if let Some((for_, why)) = state.pipeline.inbox_problem() {
        return unavailable(serde_json::json!({
            "status": "failing",
            "reason": why,
            "for_seconds": for_.as_secs(),
        }));
    }
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({"status": "ok"})),
    )
        .into_response()
}

async fn status(State(state): State<AdminState>) -> Response {
    json_or_500(status_view(state.pipeline.store(), Some(&state.pipeline)).await)
}

async fn jobs(State(state): State<AdminState>, Query(query): Query<JobsQuery>) -> Response {
    if let Some(name) = &query.state
        && StateName::parse(name).is_none()
    {
        let known: Vec<&str> = StateName::ALL.iter().map(|s| s.as_str()).collect();
        return http_server::error_response(
            StatusCode::BAD_REQUEST,
            &format!(
                "unknown state `{}`; use one of: {}",
                Escaped::str(name),
                known.join(", ")
            ),
        );
    }
    let store = state.pipeline.store();
    let view = jobs_view(store, &query).await;
    // What /jobs shows survives a crash: a task id the pipeline has just written may still wait
    // for its group commit, and a script that acts on the answer (or a SIGKILL right after it)
    // must not see a state the store can still lose. A flush started after the read covers it.
    let view = match (view, store.flush().await) {
        (Ok(view), Ok(())) => Ok(view),
        (Err(err), _) | (Ok(_), Err(err)) => Err(err),
    };
    json_or_500(view)
}

/// `POST /replay/preview`: what `POST /replay` would requeue, changing nothing (a route of its
/// own, so a daemon too old to know it answers 404 instead of replaying).
async fn replay_preview_route(
    state: State<AdminState>,
    axum::Json(mut req): axum::Json<ReplayRequest>,
) -> Response {
    req.dry_run = true;
    replay(state, axum::Json(req)).await
}

async fn replay(
    State(state): State<AdminState>,
    axum::Json(req): axum::Json<ReplayRequest>,
) -> Response {
    let ids = match select_replay(state.pipeline.store(), &req).await {
        Ok(ids) => ids,
        Err(err @ ReplayError::Store(_)) => return internal(&err),
        Err(err) => {
            let status = match err {
                // Not a mistake in the request: try again once the job has ended.
                ReplayError::UnderWay(..) => StatusCode::CONFLICT,
                _ => StatusCode::BAD_REQUEST,
            };
            return (
                status,
                axum::Json(serde_json::json!({"error": err.to_string()})),
            )
                .into_response();
        }
    };
    if req.dry_run {
        return match dry_run_answer(state.pipeline.store(), state.pipeline.inbox(), ids).await {
            Ok(answer) => axum::Json(answer).into_response(),
            Err(err) => internal(&err),
        };
    }
    match state.pipeline.replay_checked(ids.clone()).await {
        Ok(pipeline::Replayed {
            requeued: n,
            billed_again,
            refetched,
            in_doubt_again,
            refused,
            ..
        }) => {
            info!(
                requeued = n,
                billed_again, refetched, in_doubt_again, "Replay requested over the admin socket"
            );
            axum::Json(ReplayAnswer {
                requeued: n,
                billed_again,
                refetched,
                in_doubt_again,
                jobs: ids,
                preview: Vec::new(),
                refused,
            })
            .into_response()
        }
        Err(err) => internal(&err),
    }
}

/// `/metrics`: the store's counters are kept as states change, so a scrape costs
/// O(runs active) whatever the history.
async fn metrics(State(state): State<AdminState>) -> Response {
    state.pipeline.refresh_metrics(&state.metrics);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

fn json_or_500<T: Serialize>(res: Result<T, StoreError>) -> Response {
    match res {
        Ok(value) => axum::Json(value).into_response(),
        Err(err) => internal(&err),
    }
}

fn internal(err: &dyn std::fmt::Display) -> Response {
    error!(error = %err, "Admin request failed");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(serde_json::json!({"error": err.to_string()})),
    )
        .into_response()
}

/// Sends one HTTP request to the daemon's admin socket; returns the status and body.
/// `NotRunning` when nothing listens there (the caller then opens the store itself).
pub async fn request(
    socket: &Path,
    method: &str,
    path_and_query: &str,
    body: Option<&serde_json::Value>,
) -> Result<(u16, Vec<u8>), AdminError> {
    let within = if method == "GET" {
        READ_ANSWER_WITHIN
    } else {
        WRITE_ANSWER_WITHIN
    };
    // A daemon that takes the connection and never answers (stuck) must not hang the
    // operator's command for ever.
    tokio::time::timeout(within, exchange(socket, method, path_and_query, body))
        .await
        .unwrap_or_else(|_| {
            Err(AdminError::Silent {
                path: socket.to_path_buf(),
                secs: within.as_secs(),
            })
        })
}

async fn exchange(
    socket: &Path,
    method: &str,
    path_and_query: &str,
    body: Option<&serde_json::Value>,
) -> Result<(u16, Vec<u8>), AdminError> {
    // Only `/jobs` lists per job (about 300 bytes each); every other answer is small.
    let max_answer = if path_and_query.starts_with("/jobs") {
        MAX_JOBS_ANSWER_BYTES
    } else {
        MAX_ANSWER_BYTES
    };
    exchange_within(socket, method, path_and_query, body, max_answer).await
}

/// [`exchange`], reading at most `max_answer` bytes of the answer's body.
async fn exchange_within(
    socket: &Path,
    method: &str,
    path_and_query: &str,
    body: Option<&serde_json::Value>,
    max_answer: usize,
) -> Result<(u16, Vec<u8>), AdminError> {
    let stream = match tokio::net::UnixStream::connect(socket).await {
        Ok(stream) => stream,
        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(AdminError::Denied {
                path: socket.to_path_buf(),
            });
        }
        Err(_) => {
            return Err(AdminError::NotRunning {
                path: socket.to_path_buf(),
            });
        }
    };
    let fail = |message: String| AdminError::Request {
        path: socket.to_path_buf(),
        message,
    };
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| fail(e.to_string()))?;
    tokio::spawn(conn);
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let req = hyper::Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(hyper::header::HOST, "localhost")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes::Bytes::from(bytes)))
        .map_err(|e| fail(e.to_string()))?;
    let res = sender
        .send_request(req)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let status = res.status().as_u16();
    // Bounded: whatever answers on the socket cannot make the CLI read without end (a server
    // streaming an endless body grew it to 9 GB).
    let body = http_body_util::Limited::new(res.into_body(), max_answer)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                fail(format!(
                    "the answer is larger than {} KiB; ask for less (`jobs --state S`, `jobs --manifest F`)",
                    max_answer >> 10
                ))
            } else {
                fail(e.to_string())
            }
        })?
        .to_bytes();
    Ok((status, body.to_vec()))
}

/// The largest answer of `/jobs` the CLI reads from the admin socket (a million jobs are
/// about 300 MB).
const MAX_JOBS_ANSWER_BYTES: usize = 1 << 30;

/// The largest other answer the CLI reads (`/status` lists the active runs and 50 others).
const MAX_ANSWER_BYTES: usize = 64 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever answers on the socket, the CLI reads at most so much of its answer (a server
    /// streaming an endless body grew it to 9 GB), and says the answer was too large.
    #[tokio::test]
    async fn an_endless_answer_is_read_only_up_to_the_bound() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("admin.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        tokio::spawn(async move {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await;
            let chunk = format!("1000\r\n{}\r\n", "x".repeat(0x1000));
            while stream.write_all(chunk.as_bytes()).await.is_ok() {}
        });
        let err = exchange_within(&path, "GET", "/status", None, 64 * 1024)
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("larger than 64 KiB"), "{err}");
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn the_admin_socket_appears_with_mode_0660_and_no_temporary_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let listener = bind_0660(&path).unwrap();
        assert_eq!(mode_of(&path), 0o660);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["admin.sock".to_owned()], "only the socket");
        // The renamed socket is the listening one.
        let client = tokio::net::UnixStream::connect(&path);
        let (accepted, connected) = tokio::join!(listener.accept(), client);
        assert!(accepted.is_ok() && connected.is_ok());
    }

    #[tokio::test]
    async fn a_socket_path_near_the_address_limit_is_bound_in_place_with_mode_0660() {
        let dir = tempfile::tempdir().unwrap();
        // A folder whose path leaves room for `a.s` (a socket address holds 107 bytes) but
        // not for the temporary name beside it.
        let room = 100usize.saturating_sub(dir.path().as_os_str().len() + 1);
        let deep = dir.path().join("d".repeat(room));
        std::fs::create_dir(&deep).unwrap();
        let path = deep.join("a.s");
        assert!(path.as_os_str().len() < 108);
        assert!(
            deep.join(format!(".admin-{}.sock", std::process::id()))
                .as_os_str()
                .len()
                > 108
        );
        let _listener = bind_0660(&path).unwrap();
        assert_eq!(mode_of(&path), 0o660);
    }
}
