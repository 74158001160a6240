//! Wiring and supervision: builds the components in startup order (open the store, which locks
//! the state directory → clean temp files → resume unfinished jobs → first scan → READY →
//! watch), owns the cancellation token and the task tracker, talks to systemd (READY, STATUS,
//! WATCHDOG), reloads the config on SIGHUP, runs the two-phase shutdown, and defines
//! [`FatalError`], the only errors that stop the daemon. Per-job errors never reach this module.

use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::claid::wire::TaskRef;
use crate::claid::{ClaidError, Client, ClientConfig};
use crate::config::{BaseUrl, Config, ConfigError, OnManifestDone};
use crate::metrics::Metrics;
use crate::os_error::OsCause;
use crate::pipeline::{self, Deps, Folders, Policies};
use crate::store::{Store, StoreError, Unfinished};
use crate::text::Escaped;
use crate::{activity, admin, alerts, emulator, output, watcher, web, webhook};

/// The file in the state directory that names the PID of the daemon holding the store.
pub const PID_FILE: &str = "claid-hotfolder.pid";
/// Where the processed version of each running manifest is kept, under the state folder.
const COPIES_DIR: &str = "copies";
/// An announcement nobody waited for is counted as unknown
/// (`claid_hotfolder_webhooks_total{outcome="unknown_task"}`) once no submit is on the wire and
/// this long has passed for a submit's answer to be recorded (or after [`UNDECIDED_FOR`]) and
/// no job took its task: an early announcement of the daemon's own is not unknown.
const OWN_ANSWER_GRACE: Duration = Duration::from_secs(2);
const UNDECIDED_FOR: Duration = Duration::from_secs(600);
/// Past this many undecided announcements, each new one is counted at once.
const UNDECIDED_MAX: usize = 10_000;

/// How long shutdown waits for alert messages still queued (the last run's `manifest-finished`).
const ALERTS_FLUSH: Duration = Duration::from_secs(5);
/// How often `STATUS=` is refreshed for systemd.
const STATUS_INTERVAL: Duration = Duration::from_secs(5);
/// How long `run --once`, giving up on an API or bucket that stopped answering, waits for the
/// steps in progress (a write or a download may still end; a call to what does not answer
/// will not).
const UNREACHABLE_DRAIN: Duration = Duration::from_secs(2);

/// The key the embedded emulator accepts when no key is configured.
const EMBEDDED_API_KEY: &str = "embedded-emulator-key";

/// Errors that stop the daemon. Everything else is recorded on a job or a manifest.
#[derive(Debug, thiserror::Error)]
pub enum FatalError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("no API key: set `api.api_key_file` or the CLAID_API_KEY environment variable")]
    NoApiKey,
    #[error("cannot create folder {}: {}", Escaped::path(path), OsCause(cause))]
    Folder {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// A folder that lies in the inbox once created (through a symlinked parent).
    #[error("`{key}`: {why}")]
    Overlap { key: &'static str, why: String },
    /// An operator's folder is missing and `folders.create` is off: most likely a typo.
    #[error(
        "`{key}`: the folder {} does not exist (the nearest existing folder above it is {}); create it with the service's owner and mode, correct the path, or set `folders.create: true`",
        Escaped::path(path),
        Escaped::path(parent)
    )]
    MissingFolder {
        key: &'static str,
        path: PathBuf,
        parent: PathBuf,
    },
    #[error("`{key}`: {} is not a folder", Escaped::path(path))]
    NotAFolder { key: &'static str, path: PathBuf },
    #[error(
        "`{key}`: {} cannot be a folder: {} above it is a file; choose a path under a folder",
        Escaped::path(path),
        Escaped::path(file)
    )]
    UnderAFile {
        key: &'static str,
        path: PathBuf,
        file: PathBuf,
    },
    #[error(
        "`{key}`: the daemon cannot {needs} the folder {}: {}; {}",
        Escaped::path(path),
        OsCause(cause),
        folder_fix(cause)
    )]
    FolderNotWritable {
        key: &'static str,
        path: PathBuf,
        /// `read and write` or `read`.
        needs: &'static str,
        cause: std::io::Error,
    },
    #[error("cannot clean temporary files in the outbox")]
    CleanOutbox(#[source] output::OutputError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("another daemon (PID {pid}) holds the state directory {path}; stop it first")]
    AlreadyRunning { path: PathBuf, pid: String },
    #[error(transparent)]
    InboxTaken(#[from] watcher::InboxTaken),
    #[error(
        "the job store has failed every write for {} s although its folder {} takes writes again ({why}); the store keeps the first I/O error it met until it is opened again: exiting so that the service manager starts the daemon again (unfinished jobs resume from the store)",
        for_how_long.as_secs(),
        Escaped::path(state)
    )]
    StoreStuck {
        state: PathBuf,
        for_how_long: Duration,
        why: String,
    },
    #[error(
        "the job store's folder {} {why} while the daemon ran (a cleanup of the state folder?): what it recorded is gone with it, and a start on an empty store would submit, and bill, again every image it had sent; stopping with 64, which the service does not restart: put the state folder back from a backup, or start the daemon again to begin afresh knowingly",
        Escaped::path(path)
    )]
    StoreGone { path: PathBuf, why: &'static str },
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    #[error("cannot build the API client")]
    Client(#[source] Box<ClaidError>),
    #[error("cannot start the embedded emulator")]
    Emulator(#[source] std::io::Error),
    #[error("the inbox watcher stopped")]
    Watcher(#[source] watcher::WatchError),
    #[error(transparent)]
    Web(#[from] web::WebError),
    #[error(transparent)]
    Alerts(#[from] alerts::AlertError),
    #[error(transparent)]
    Webhook(#[from] webhook::WebhookError),
    /// With what to do about it, as `validate` says it.
    /// (Not a `source`: the message holds it already.)
    #[error("{}{}", .0, .0.hint().map(|hint| format!("; {hint}")).unwrap_or_default())]
    Storage(crate::storages::StorageError),
}

impl From<crate::storages::StorageError> for FatalError {
    fn from(err: crate::storages::StorageError) -> FatalError {
        FatalError::Storage(err)
    }
}

/// What to do about a folder the daemon cannot use, after why.
fn folder_fix(cause: &std::io::Error) -> &'static str {
    match cause.raw_os_error() {
        Some(libc::EROFS) => {
            "it is on a file system mounted read-only: point the key at a folder on a writable one, or remount it read-write"
        }
        Some(libc::ENOSPC | libc::EDQUOT) => {
            "its file system is full: free space there, or point the key at another one"
        }
        _ => {
            "give the user it runs as that access (the package's folders belong to the group claid-hotfolder, mode 2770)"
        }
    }
}

/// How `run` was asked to behave.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Process what is in the inbox now, wait for every job, then return.
    pub once: bool,
    /// Draw a progress bar on this terminal (`run --once` with stderr on a TTY); log lines
    /// are written above it.
    pub progress_bar: Option<crate::logging::Terminal>,
    /// The config file, re-read on SIGHUP.
    pub config_path: Option<PathBuf>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every job handled in this run is done (or unchanged).
    AllDone,
    /// Some job failed, is held in doubt, or some manifest was rejected.
    SomeFailed,
    /// Stopped by a signal before the work was finished (the rest resumes at the next start).
    Interrupted,
    /// `run --once` stopped because the API refused the daemon in a way no retry mends (the
    /// key, the credits or the scope; a wrong `api.base_url`; a TLS handshake that fails);
    /// unfinished jobs stay in the store.
    Refused {
        refusal: pipeline::health::Refusal,
        reason: String,
    },
    /// `run --once` stopped because the API (or, with `bucket`, a storage's bucket) stayed
    /// unreachable for `api.unreachable_timeout`; unfinished jobs stay in the store.
    Unreachable { why: String, bucket: bool },
    /// `run --once` handled what it could read, but these inbox subfolders could not be read.
    Unscanned { folders: Vec<PathBuf> },
    /// `run --once` ended its runs, but the report of `runs` of them could be written neither
    /// into the outbox nor into the archive (a full disk).
    ReportsUnwritten { runs: usize },
    /// `run --once` stopped because the outbox's disk stayed full or unwritable for
    /// `api.unreachable_timeout`; unfinished jobs stay in the store.
    Unwritable { why: String },
    /// `run --once` stopped because the job store could not be written (the state folder's
    /// disk full or read-only) for `api.unreachable_timeout`, or ended with writes failing.
    StoreUnwritable { why: String },
    /// `run --once` stopped because a storage cannot be used as configured (`why`: Claid's
    /// connector found pointing elsewhere than its `url` during the run, or the storage taken
    /// out of the config while Claid wrote its objects); unfinished jobs stay in the store.
    StorageHeld { why: String },
}

/// How the work of `run --once` ended.
#[derive(Debug)]
enum OnceEnd {
    /// Every run taken in has ended or is held.
    Settled,
    /// As `Settled`, but these subfolders of the inbox could not be read: what they hold was
    /// not seen.
    Unscanned(Vec<PathBuf>),
    /// The outbox's disk stayed full or unwritable for `api.unreachable_timeout`.
    Unwritable {
        why: String,
    },
    /// The job store could not be written for `api.unreachable_timeout`, or the run settled
    /// while its writes fail (a manifest that could not be recorded stays in the inbox).
    StoreUnwritable {
        why: String,
    },
    Refused {
        refusal: pipeline::health::Refusal,
        reason: String,
    },
    Unreachable {
        why: String,
        bucket: bool,
    },
    StorageHeld {
        why: String,
    },
}

/// Runs the daemon until `shutdown` completes (or, with `once`, until the inbox is processed).
pub async fn run(
    config: Config,
    opts: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<Outcome, FatalError> {
    // A daemon takes SIGHUP as "reload" from its first moment: one that came before the
    // watch loop (the admin socket answers early) would otherwise end the process, SIGHUP's
    // default. It is read once the inbox is watched. `run --once` takes it as a stop
    // (`signal::shutdown`).
    let hangup = if opts.once {
        None
    } else {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
    };
    // The key in force (a digest): a SIGHUP after the key file changed says the new key waits
    // for a restart, as the client keeps the key it started with; likewise the storages' keys
    // (the bucket clients keep theirs) and the alert sinks' URLs. Taken here, just before
    // those files are read for use and before anything answers (the admin socket): a file
    // rewritten once the socket answered was taken in force unseen, and its SIGHUP named
    // nothing.
    let in_force = InForce {
        key: key_digest(&config),
        secret_files: secret_file_digests(&config),
    };
    let api_key = crate::config::load_api_key(&config.api)?;
    if let Some(warning) = crate::config::api_key_exposure(&config.api) {
        warn!("{warning}");
    }
    for warning in crate::config::web_file_exposures(config.web.as_ref()) {
        warn!("{warning}");
    }
    // The storages' keys are read now: a missing credentials file stops the start.
    let mut storages = crate::storages::Storages::open(&config.storages)?;

    // The embedded emulator lives as long as this function; its storage connectors are the
    // config's own storages.
    let mut embedded = None;
    let (base_url, api_key) = match &config.api.base_url {
        BaseUrl::Embedded => {
            // Task ids from the clock: the store keeps the tasks of earlier runs, and an
            // emulator counting from 1 again named them (every image of a second run was held
            // in doubt, "a task another job took").
            let mut scenario = emulator::Scenario::default().ids_from_the_clock();
            for connector in storages.emulator_connectors() {
                scenario = scenario.storage(connector);
            }
            let handle = emulator::spawn(scenario)
                .await
                .map_err(FatalError::Emulator)?;
            let url = handle.base_url();
            info!(base_url = %url, "Started the embedded Claid emulator");
            embedded = Some(handle);
            (url, api_key.unwrap_or_else(|| EMBEDDED_API_KEY.to_owned()))
        }
        BaseUrl::Url(url) => (url.clone(), api_key.ok_or(FatalError::NoApiKey)?),
    };

    let folders = &config.folders;
    let copies = folders.state.join(COPIES_DIR);
    prepare_folders(&config, &copies)?;
    // The store's lock comes first: a second daemon must not touch the outbox of a running one.
    let (store, unfinished) = open_store(&folders.state)?;
    // The store's id names this daemon's part of a staging prefix (`staging/<id>/`), to find
    // what a retired daemon left there.
    info!(state = %folders.state.display(), store_id = store.id(), "Opened the job store");
    // One daemon per inbox: another one on the same folder, above it or inside it would bill
    // the same manifests again. Held until this function returns.
    let mut inbox_claim =
        watcher::claim_inbox(&folders.inbox, &folders.state).map_err(FatalError::InboxTaken)?;
    store.set_object_places(
        config
            .storages
            .values()
            .map(|entry| (entry.claid_name.clone(), entry.url()))
            .collect(),
    );
    let cleaned = output::clean_stale_tmp(&folders.outbox).map_err(FatalError::CleanOutbox)?;
    info!(removed = cleaned.removed, outbox = %folders.outbox.display(), "Removed stale temporary files");
    if let Some(problem) = &cleaned.first_problem {
        warn!(
            skipped = cleaned.skipped,
            "Some of the outbox could not be looked through for stale temporary files (first: {problem}); they were skipped. Give the daemon's user access to them, or leave them: an output written there fails alone"
        );
    }

    let metrics = Arc::new(Metrics::new());
    let observer = metrics.clone();

    if reqwest::Url::parse(&base_url).is_ok_and(|url| crate::claid::has_credentials(&url)) {
        warn!(
            "`api.base_url` holds credentials (`user:password@`); they are not sent: Claid authenticates with the API key alone, as `Authorization: Bearer`, and credentials would go as a second `Authorization` header that breaks it. Remove them from the URL"
        );
    }
    let client = Client::new(ClientConfig {
        base_url,
        api_key,
        requests_per_second: config.api.requests_per_second,
        requests_per_minute: config.api.requests_per_minute,
        request_timeout: config.api.request_timeout,
        upload_timeout: config.api.upload_timeout.max(config.api.request_timeout),
        max_download_bytes: config.limits.max_download_bytes,
    })
    .map_err(|err| FatalError::Client(Box::new(err)))?
    .with_latency_observer(Arc::new(move |endpoint, latency| {
        observer.observe_latency(endpoint, latency)
    }));

    // Each storage's connector exists on Claid's side and its prefix can be listed.
    let at_claid =
        check_storages_at_start(&storages, &client, config.api.unreachable_timeout).await?;
    if !storages.is_empty() {
        info!(
            storages = storages.iter().count(),
            "Checked the storages: every connector exists and every prefix can be listed"
        );
    }

    follow_renamed_connectors(&store, &mut storages, &config, &at_claid).await?;

    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let pipeline = pipeline::Handle::new(Deps {
        store: store.clone(),
        client,
        folders: Folders {
            inbox: folders.inbox.clone(),
            outbox: folders.outbox.clone(),
            archive: folders.archive.clone(),
            rejected: folders.rejected.clone(),
            copies,
        },
        policies: policies(&config),
        poll: config.api.poll,
        limits: config.limits,
        profiles: config.profiles.clone(),
        max_in_flight: config.api.max_in_flight.get(),
        max_downloads: config.api.max_downloads.get(),
        metrics: metrics.clone(),
        batch: config.api.batch,
        webhooks: config.webhook.as_ref().map(|w| w.poll_fallback),
        storages: storages.clone(),
        staging: config
            .api
            .staging
            .as_deref()
            .and_then(|name| storages.get(name))
            .map(|storage| {
                crate::storages::Staging::new(
                    storage.clone(),
                    config.api.staging_delete,
                    store.id(),
                )
            }),
        cancel: cancel.clone(),
        tracker: tracker.clone(),
    });

    // The dashboard and the alerts (issue 14) read the activity sampler; the alerts subscribe
    // to the pipeline's notices before it resumes, so no notice is missed.
    // Always sampled: its disk check also holds new submits while the outbox's disk takes no
    // more outputs.
    let activity = activity::spawn(pipeline.clone(), folders.outbox.clone(), cancel.clone()).await;
    let alerts = if config.alerts.is_empty() {
        None
    } else {
        Some(alerts::start(
            &config.alerts,
            config.web.as_ref().map(|w| w.link_base()),
            &pipeline,
            &activity,
            metrics.clone(),
        )?)
    };

    // Bound before anything runs: a dashboard that cannot listen stops the start.
    let web_task = match &config.web {
        Some(web_config) => {
            let (_, task) = web::start(
                web::Deps {
                    config: web_config.clone(),
                    pipeline: pipeline.clone(),
                    activity: activity.clone(),
                    inbox: folders.inbox.clone(),
                    outbox: folders.outbox.clone(),
                    rejected: folders.rejected.clone(),
                    state: folders.state.clone(),
                },
                cancel.clone(),
            )
            .await?;
            Some(task)
        }
        _ => None,
    };

    // Another live daemon on this socket stops the start; a socket that cannot be made (a
    // folder this user may not write) leaves the daemon without one, said at once.
    let admin_socket = match admin::bind_socket(config.admin.socket.clone()) {
        Ok(bound) => Some(bound),
        Err(err @ (admin::AdminError::Taken { .. } | admin::AdminError::NotASocket { .. })) => {
            return Err(err.into());
        }
        Err(err) => {
            error!(error = %error_chain(&err), "The admin socket cannot be made: `status`, `jobs` and `replay` cannot reach this daemon (set `admin.socket` to a folder it may write)");
            None
        }
    };
    let metrics_listener = match config.admin.metrics_listen {
        Some(addr) => Some(admin::bind_metrics(addr).await?),
        None => None,
    };

    // Claid's webhooks, when configured: verified results go to the tasks waiting for them
    // (polling becomes the fallback). Listening before resuming, so none is missed.
    let webhook_task = match &config.webhook {
        Some(webhook_config) => {
            Some(start_webhooks(webhook_config, &pipeline, &metrics, &cancel).await?)
        }
        None => None,
    };

    let summary = pipeline.resume(unfinished).await?;
    info!(
        manifests = summary.manifests,
        queued = summary.queued,
        polling = summary.polling,
        downloading = summary.downloading,
        in_doubt_resubmitted = summary.in_doubt_resubmitted,
        in_doubt_held = summary.in_doubt_held,
        still_held = summary.still_held,
        awaiting_webhook = summary.awaiting_webhook,
        staging_cleanups = summary.staging_cleanups,
        "Resumed unfinished work from the store"
    );
    pipeline.start();

    let admin_state = admin::AdminState {
        pipeline: pipeline.clone(),
        metrics: metrics.clone(),
    };
    let admin_task = admin_socket.map(|socket| {
        tokio::spawn(admin::serve_socket(
            socket,
            admin_state.clone(),
            cancel.clone(),
        ))
    });
    let metrics_task = metrics_listener
        .map(|listener| tokio::spawn(admin::serve_metrics(listener, admin_state, cancel.clone())));

    let work = async {
        if opts.once {
            run_once(&pipeline, &config, &opts).await
        } else {
            run_watching(
                &pipeline,
                &config,
                &opts,
                &cancel,
                &mut inbox_claim,
                hangup,
                in_force,
            )
            .await
            .map(|()| OnceEnd::Settled)
        }
    };
    tokio::pin!(work);
    let shutdown_requested;
    let result = tokio::select! {
        res = &mut work => { shutdown_requested = false; res }
        () = shutdown => { shutdown_requested = true; Ok(OnceEnd::Settled) }
    };

    // Phase 1: stop intake and waits; units of work in progress finish.
    let _ = sd_notify::notify(&[
        NotifyState::Stopping,
        NotifyState::Status("Draining in-flight steps"),
    ]);
    cancel.cancel();
    tracker.close();
    // An API (or bucket) that stopped answering will not answer the steps still waiting on
    // it: they are parked at once (a submit among them is in doubt at the next start, as it
    // would be after a longer wait), so `run --once` says why it ended now, not a grace later.
    let grace = match &result {
        // (Not when only a bucket is away: the API still answers, and a synchronous upload
        // cut short would be in doubt.)
        Ok(OnceEnd::Unreachable { bucket: false, .. }) => {
            config.shutdown_grace.min(UNREACHABLE_DRAIN)
        }
        _ => config.shutdown_grace,
    };
    if shutdown_requested {
        info!(grace = ?grace, "Shutting down: draining in-flight steps");
    }
    // Phase 2: after the grace period stop waiting; unfinished jobs resume at the next start.
    let started_drain = tokio::time::Instant::now();
    let mut graceful = tokio::time::timeout(grace, tracker.wait()).await.is_ok();
    // Submits and uploads Claid is working on when the grace ends are waited for, up to
    // their own timeout (`api.upload_timeout`: a synchronous upload answers when the edit is
    // done): cut off, each would be in doubt at the next start, and sent (billed) again under
    // `in_doubt: resubmit`. Their answers are recorded as usual, then the steps park.
    // (Not when the API stopped answering: it will not answer them either.)
    let api_away = matches!(&result, Ok(OnceEnd::Unreachable { bucket: false, .. }));
    if !graceful && !api_away && pipeline.billable_on_the_wire() > 0 {
        let until = tokio::time::Instant::now() + config.api.upload_timeout;
        info!(
            requests = pipeline.billable_on_the_wire(),
            up_to = ?config.api.upload_timeout,
            "Waiting for the answers of submits and uploads Claid is working on, so they are not in doubt at the next start"
        );
        while pipeline.billable_on_the_wire() > 0 && tokio::time::Instant::now() < until {
            if tokio::time::timeout(Duration::from_millis(200), tracker.wait())
                .await
                .is_ok()
            {
                graceful = true;
                break;
            }
        }
        // The answers' records are written right after them.
        graceful = graceful
            || tokio::time::timeout(Duration::from_secs(2), tracker.wait())
                .await
                .is_ok();
    }
    // Runs whose last job ended while draining are finished now, not at the next start.
    let finished = pipeline
        .stop_finisher(
            grace
                .saturating_sub(started_drain.elapsed())
                .max(Duration::from_secs(1)),
        )
        .await;
    let graceful = graceful && finished;
    if let Err(err) = store.flush().await {
        error!(error = %err, "Cannot flush the store at shutdown");
    }
    if let Some(alerts) = alerts {
        alerts.finish(ALERTS_FLUSH).await;
    }
    if let Some(task) = web_task
        && let Err(err) = task.await
    {
        error!(error = %err, "The dashboard panicked");
    }
    if let Some(task) = webhook_task {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => error!(error = %error_chain(&err), "The webhook receiver failed"),
            Err(err) => error!(error = %err, "The webhook receiver panicked"),
        }
    }
    if graceful {
        info!("Drained gracefully");
    } else {
        warn!(grace = ?grace, "Grace period over; parked jobs resume at the next start");
    }
    for (name, task) in [("admin socket", admin_task), ("metrics", metrics_task)] {
        let Some(task) = task else { continue };
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => error!(error = %error_chain(&err), "The {name} server failed"),
            Err(err) => error!(error = %err, "The {name} server panicked"),
        }
    }
    let _ = std::fs::remove_file(folders.state.join(PID_FILE));
    drop(embedded);
    let once_end = result?;

    let totals = pipeline.totals();
    if !opts.once {
        // The daemon ran until told to stop: a clean stop is success, whatever jobs failed
        // along the way (they are in the store and the reports), so systemd sees exit 0.
        return Ok(Outcome::AllDone);
    }
    if shutdown_requested {
        // (`totals.done` counts the unchanged rows too.)
        let ended = totals.done + totals.failed + totals.held + totals.superseded;
        warn!(
            manifests = totals.manifests,
            jobs = totals.jobs,
            done = totals.done.saturating_sub(totals.unchanged),
            unchanged = totals.unchanged,
            failed = totals.failed,
            unfinished = totals.jobs.saturating_sub(ended),
            "run --once was stopped by a signal before the inbox was processed: the unfinished jobs stay in the store and resume at the next run (exit 75)"
        );
        return Ok(Outcome::Interrupted);
    }
    let mut unscanned = Vec::new();
    match once_end {
        OnceEnd::Settled => {}
        OnceEnd::Unscanned(folders) => unscanned = folders,
        OnceEnd::Refused { refusal, reason } => return Ok(Outcome::Refused { refusal, reason }),
        OnceEnd::Unreachable { why, bucket } => {
            return Ok(Outcome::Unreachable { why, bucket });
        }
        OnceEnd::Unwritable { why } => return Ok(Outcome::Unwritable { why }),
        OnceEnd::StoreUnwritable { why } => return Ok(Outcome::StoreUnwritable { why }),
        OnceEnd::StorageHeld { why } => return Ok(Outcome::StorageHeld { why }),
    }
    // Read after the drain: every job task has ended and the finisher has handled every
    // outcome sent before its stop, so the counts are whole. Of the jobs found held at the
    // start, those a newer version of their manifest superseded, or a webhook delivered, are
    // held no more.
    let held_now = usize::try_from(pipeline.store().counts().totals.in_doubt).unwrap_or(usize::MAX);
    let held_from_before = summary
        .still_held
        .min(held_now.saturating_sub(usize::try_from(totals.held).unwrap_or(usize::MAX)));
    info!(
        manifests = totals.manifests,
        rejected = totals.rejected,
        jobs = totals.jobs,
        // Made now, as the reports count `done`; the rows already done before are `unchanged`
        // (it counted both, so a reader adding the two counted those twice).
        done = totals.done.saturating_sub(totals.unchanged),
        unchanged = totals.unchanged,
        failed = totals.failed,
        held_in_doubt = totals.held,
        // Held by an earlier run and found so at this start: still waiting for
        // `replay --in-doubt` (the exit code counts them too).
        held_from_before,
        superseded = totals.superseded,
        // Of resumed runs, ended in an earlier life: in their reports, not in the counts above.
        done_before = summary.ended_before.done,
        unchanged_before = summary.ended_before.unchanged,
        failed_before = summary.ended_before.failed,
        superseded_before = summary.ended_before.superseded,
        "Inbox processed"
    );
    if !unscanned.is_empty() {
        return Ok(Outcome::Unscanned { folders: unscanned });
    }
    if totals.reports_unwritten > 0 {
        return Ok(Outcome::ReportsUnwritten {
            runs: totals.reports_unwritten,
        });
    }
    if totals.failed > 0
        || totals.held > 0
        || totals.rejected > 0
        || totals.manifests_with_failures > 0
        || totals.manifests_held > 0
    {
        Ok(Outcome::SomeFailed)
    } else {
        Ok(Outcome::AllDone)
    }
}

/// Starts the webhook receiver: the secret is read (and its file's mode checked), the listener
/// bound, and every verified update handed to the pipeline's dispatch.
async fn start_webhooks(
    config: &webhook::WebhookConfig,
    pipeline: &pipeline::Handle,
    metrics: &Arc<Metrics>,
    cancel: &CancellationToken,
) -> Result<tokio::task::JoinHandle<Result<(), webhook::WebhookError>>, FatalError> {
    let secret = webhook::Secret::load(config)?;
    if let Some(weakness) = secret.weakness() {
        warn!("{weakness}");
    }
    let listener = webhook::bind(config.listen).await?;
    let counters = Arc::new(webhook::WebhookCounters::default());
    metrics.watch_webhooks(counters.clone());
    let (tx, mut rx) = mpsc::channel(1024);
    let dispatch_to = pipeline.clone();
    let unknown = counters.clone();
    tokio::spawn(async move {
        // Verified webhooks wait in the channel (the receiver answers once it holds them, and
        // keeps those nobody waits for in the store first) until the start's resume has
        // registered the jobs they may belong to.
        dispatch_to.wait_resumed().await;
        // Announcements nobody waited for: each may be the own of a submit on the wire (Claid
        // announced it before answering) or of one answered just now whose task is not
        // recorded yet (the client is done with a call before the pipeline records its task),
        // so it is counted as unknown only once no job took its task after the grace. Counted
        // at once when no submit was on the wire, one answered in between was counted twice:
        // unknown, then handed to its job.
        let mut undecided: VecDeque<(TaskRef, Instant)> = VecDeque::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                update = rx.recv() => {
                    let Some(update): Option<crate::claid::wire::TaskUpdate> = update else { break };
                    let task = update.task();
                    if dispatch_to.deliver(update).await != pipeline::dispatch::Delivery::Kept {
                        continue;
                    }
                    // Decided in the order they came.
                    if undecided.len() >= UNDECIDED_MAX {
                        // A flood: told at once, and not kept (an own one lost this way is
                        // polled).
                        unknown.count_unknown_task();
                        let _ = dispatch_to.store().forget_announcement_of(task).await;
                    } else {
                        undecided.push_back((task, Instant::now()));
                    }
                }
                _ = tick.tick(), if !undecided.is_empty() => {
                    let quiet = dispatch_to.billable_on_the_wire() == 0;
                    while let Some((task, at)) = undecided.front().copied() {
                        if !(quiet && at.elapsed() >= OWN_ANSWER_GRACE) && at.elapsed() < UNDECIDED_FOR {
                            break;
                        }
                        undecided.pop_front();
                        let owner = dispatch_to.store().task_owner(task).await;
                        if !matches!(owner, Ok(Some(_))) {
                            unknown.count_unknown_task();
                        }
                        // No job's: not kept for a day (another client's announcements on the
                        // same account filled the store and the memory of each start). Kept
                        // while a lost submit may still adopt it, or the store could not say.
                        if matches!(owner, Ok(None)) && dispatch_to.awaiting_adoption() == 0 {
                            let _ = dispatch_to.store().forget_announcement_of(task).await;
                        }
                    }
                }
            }
        }
    });
    let keep_for = pipeline.clone();
    let keeper: webhook::Keeper = Arc::new(move |task, body| {
        let pipeline = keep_for.clone();
        Box::pin(async move {
            if !pipeline.announcement_would_be_kept(task) {
                return true;
            }

            match pipeline.store().keep_announcement(task, &body).await {
                Ok(()) => true,
                Err(err) => {
                    warn!(task_id = task.id(), error = %err, "Cannot keep a webhook that came before its submit answer; it is answered 503");
                    false
                }
            }
        })
    });
    Ok(tokio::spawn(webhook::serve(
        listener,
        secret,
        tx,
        Some(keeper),
        counters,
        cancel.clone(),
    )))
}

/// `run --once`: every manifest in the inbox now, then wait for all jobs; gives up at once
/// when the API refuses the key (for want of credits, once the tasks Claid already took are
/// delivered), and after `api.unreachable_timeout` without any answer from the API.
async fn run_once(
    pipeline: &pipeline::Handle,
    config: &Config,
    opts: &RunOptions,
) -> Result<OnceEnd, FatalError> {
    let (unreadable, manifests) = first_scan(pipeline, config).await?;
    let offered = Arc::new(std::sync::Mutex::new(manifests));
    let _resaves = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(follow_resaves(
        pipeline.clone(),
        offered.clone(),
        config.watch.settle,
    )));
    let bar = opts
        .progress_bar
        .as_ref()
        .map(|terminal| Progress::start(pipeline, terminal));
    let end = tokio::select! {
        () = pipeline.wait_settled() => OnceEnd::Settled,
        end = give_up(
            pipeline.health_state(),
            pipeline.store().clone(),
            config.api.unreachable_timeout,
            || pipeline.in_flight(),
        ) => end,
    };
    if let Some(bar) = bar {
        bar.finish(pipeline);
    }
    // A refused or unreachable API is reported once, with what to do, by the caller.
    if !matches!(end, OnceEnd::Settled) {
        return Ok(end);
    }
    tell_resaves_left(&offered);
    // Settled while the store's writes fail: what could not be recorded (a manifest, a
    // result) is not done, whatever the counts say.
    if let Some((_, why)) = pipeline.store().write_failing() {
        return Ok(OnceEnd::StoreUnwritable { why });
    }
    if !unreadable.is_empty() {
        return Ok(OnceEnd::Unscanned(unreadable));
    }
    Ok(end)
}

/// A connector renamed at Claid, and in the config (`claid_name`), since the last start:
/// the jobs not sent yet, and the failed ones, are rewritten to name it by its new name (Claid
/// refuses the old one: every queued image failed `claid-invalid-request`, at every replay),
/// and the objects Claid wrote under the old name are the storage's (the jobs at Claid were
/// held, "put its `storages` entry back", with the entry there). Then the connectors of the
/// config are noted for the next start.
async fn follow_renamed_connectors(
    store: &Store,
    storages: &mut crate::storages::Storages,
    config: &Config,
    at_claid: &[String],
) -> Result<(), FatalError> {
    if storages.is_empty() {
        return Ok(());
    }
    let noted = store.noted_connectors().await?;
    // The jobs made before this start follow every rename (also names swapped between
    // storages); objects named by an old name no storage or connector has now are the
    // renamed storage's, and a replay later follows those renames only (an old name that is
    // another storage's now names that storage's new jobs).
    let rewrites = storages.rewrites_since(&noted);
    let renamed = storages.renamed_since(&noted, at_claid);
    storages.follow_renames(&renamed);
    if !renamed.is_empty() {
        // Objects under the old names are where the new ones write.
        let mut places: std::collections::BTreeMap<String, String> = config
            .storages
            .values()
            .map(|entry| (entry.claid_name.clone(), entry.url()))
            .collect();
        for (old, new) in &renamed {
            if let Some(place) = places.get(new).cloned() {
                places.insert(old.clone(), place);
            }
        }
        store.set_object_places(places);
    }
    // Also when there is none: the renames an earlier start kept are forgotten (a name given
    // to another connector since would have its jobs rewritten to the old one's).
    let jobs = store.rename_connectors(rewrites.clone(), renamed).await?;
    for (old, new) in &rewrites {
        info!(
            from = %crate::text::Escaped::str(old),
            to = %crate::text::Escaped::str(new),
            jobs,
            "A storage's connector was renamed since the last start; the images not sent yet (and the failed ones) are sent under its new name, and objects written under the old one are the storage's"
        );
    }
    store.note_connectors(storages.connectors()).await?;
    Ok(())
}

/// The storages' start check ([`crate::storages::Storages::check`]; the connector names Claid
/// has), waiting out an API or a
/// bucket that does not answer (a 5xx, a 429, a refused or timed-out connection: the
/// `EX_UNAVAILABLE` class) for up to `patience` (`api.unreachable_timeout`) with backoff: a
/// Claid blip or an S3 server still starting at boot is not a refused start (systemd restarted
/// it every 5 s). Told once; what cannot heal (a missing connector, refused keys, an API no TLS
/// handshake with succeeds) fails at once.
async fn check_storages_at_start(
    storages: &crate::storages::Storages,
    client: &Client,
    patience: Duration,
) -> Result<Vec<String>, crate::storages::StorageError> {
    const LONGEST_WAIT: Duration = Duration::from_secs(15);
    let started = tokio::time::Instant::now();
    let mut wait = Duration::from_secs(1);
    let mut told = false;
    loop {
        let err = match storages.check(Some(client)).await {
            Ok(at_claid) => {
                if told {
                    info!("The storages answer; starting");
                }
                return Ok(at_claid);
            }
            Err(err) => err,
        };
        // The last wait is cut to what is left of the patience (it gave up once the next
        // whole wait would pass it: at about half of `api.unreachable_timeout`).
        let left = patience.saturating_sub(started.elapsed());
        if err.exit_code() != crate::exit::UNAVAILABLE || err.tls_refused() || left.is_zero() {
            return Err(err);
        }
        let wait_now = wait.min(left);
        if !told {
            warn!(
                error = %err,
                gives_up_after_s = patience.as_secs(),
                "Cannot check the storages yet (the API or a bucket does not answer); retrying with backoff until `api.unreachable_timeout`"
            );
            told = true;
        }
        // systemd waits for READY; a check may take a storage call's own timeout (60 s).
        let extend = (wait_now + Duration::from_secs(90)).as_micros();
        let _ = sd_notify::notify(&[
            NotifyState::Status(
                "Waiting to check the storages: the API or a bucket does not answer",
            ),
            NotifyState::ExtendTimeoutUsec(u32::try_from(extend).unwrap_or(u32::MAX)),
        ]);
        tokio::time::sleep(wait_now).await;
        wait = (wait * 2).min(LONGEST_WAIT);
    }
}

/// Completes when `run --once` should stop waiting: the API refused the daemon (paused), or
/// no call has succeeded for `timeout` while some failed. Refused for want of credits (402),
/// the tasks Claid already took (`in_flight`: billed, and their polls and downloads are free)
/// are waited for first, for `timeout` at most: given up at once, their results waited at
/// Claid while nobody ran the daemon again, and a day later they were paid for again.
async fn give_up(
    health: Arc<pipeline::health::HealthState>,
    store: crate::store::Store,
    timeout: Duration,
    in_flight: impl Fn() -> usize,
) -> OnceEnd {
    let mut changes = health.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut out_of_credits_since: Option<tokio::time::Instant> = None;
    loop {
        // A result or a manifest that cannot be recorded is waited for until the next start:
        // a run does not wait for ever for a store that cannot be written.
        if let Some((for_how_long, why)) = store.write_failing()
            && for_how_long >= timeout
        {
            return OnceEnd::StoreUnwritable { why };
        }
        match health.current() {
            pipeline::Health::Paused {
                refusal: pipeline::health::Refusal::Status(402),
                reason,
            } if in_flight() > 0 => {
                let since = match out_of_credits_since {
                    Some(since) => since,
                    None => {
                        info!(
                            in_flight = in_flight(),
                            "No credits left: no new image is submitted; the images already on their way to Claid are finished first (those it refused end at once)"
                        );
                        *out_of_credits_since.insert(tokio::time::Instant::now())
                    }
                };
                if since.elapsed() >= timeout {
                    return OnceEnd::Refused {
                        refusal: pipeline::health::Refusal::Status(402),
                        reason,
                    };
                }
            }
            pipeline::Health::Paused { reason, refusal } => {
                return OnceEnd::Refused { refusal, reason };
            }
            _ => out_of_credits_since = None,
        }
        // A storage that cannot be used as configured (its outputs go where the daemon does
        // not look, or it left the config): nothing of it moves until a restart with the
        // config fixed, which a wait does not bring.
        if let Some(why) = health.any_storage_held() {
            return OnceEnd::StorageHeld { why };
        }
        if let Some((for_how_long, why)) = health.failing()
            && for_how_long >= timeout
        {
            let bucket = health.only_storage_failing();
            return OnceEnd::Unreachable { why, bucket };
        }
        // New submits wait while the outbox's disk takes no outputs, or outputs fail to be
        // written (a folder the daemon may not write); a run does not wait for ever for it.
        if let Some((for_how_long, why)) = health.disk_problem().or_else(|| health.writes_failing())
            && for_how_long >= timeout
        {
            return OnceEnd::Unwritable { why };
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tick.tick() => {}
        }
    }
}

/// Takes in every manifest of the inbox once it is stable; returns the inbox's subfolders that
/// could not be read (each was named in a WARN), and the manifests taken in with the version
/// of each (for [`follow_resaves`]).
async fn first_scan(
    pipeline: &pipeline::Handle,
    config: &Config,
) -> Result<(Vec<PathBuf>, Vec<(PathBuf, watcher::Fingerprint)>), FatalError> {
    pipeline::intake::restore_waiting_versions(pipeline.store(), &config.folders.inbox).await;
    let (candidates, unreadable) =
        watcher::scan_stable_telling(&config.folders.inbox, &config.watch)
            .await
            .map_err(FatalError::Watcher)?;
    info!(manifests = candidates.len(), "Scanned the inbox");
    let manifests = candidates
        .iter()
        .filter(|c| c.kind == watcher::CandidateKind::Manifest)
        .map(|c| (c.path.clone(), c.fingerprint))
        .collect();
    for candidate in candidates {
        pipeline.offer(candidate).await;
    }
    // Queued images of runs saved again while the daemon was down wait for these candidates.
    let resaved = pipeline.clone();
    tokio::spawn(async move { resaved.release_resaved().await });
    Ok((unreadable, manifests))
}

/// At the end of `run --once`: a manifest of its first scan saved again too late to run in it
/// (its run ended first, or it had not stood for `watch.settle`) is left in the inbox for the
/// next run, which is said (it ended 0 without a word; acceptance run).
fn tell_resaves_left(offered: &std::sync::Mutex<Vec<(PathBuf, watcher::Fingerprint)>>) {
    let offered = offered
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    for (path, version) in offered {
        if plain_file_version(&path).is_some_and(|now| now != version) {
            warn!(manifest = %crate::text::Escaped::path(&path), "This manifest was saved again as `run --once` ended; the new version is left in the inbox for the next run");
        }
    }
}

/// The version (size and mtime) of the plain file at `path`, from one `lstat`; `None` for a
/// link or a folder (never read as a manifest: links are not followed) or nothing there.
fn plain_file_version(path: &Path) -> Option<watcher::Fingerprint> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    meta.is_file()
        .then(|| watcher::Fingerprint::of(&meta))
        .flatten()
}

/// How often `run --once` looks whether a manifest it took in was saved again.
const ONCE_RESAVE_LOOK: Duration = Duration::from_secs(1);

/// `run --once` has no watcher, so a manifest of its first scan saved again while it runs
/// ("fixed a typo, saved over it") went unseen: the old version's rows were all submitted
/// (billed, though no longer wanted) and the new one waited for the next run. Each such
/// path is looked at every [`ONCE_RESAVE_LOOK`] until `run --once` ends; a new version, a
/// plain file unchanged for `watch.settle` (a network share's upload pausing mid-file is not
/// taken for a whole version), is offered to intake as the watcher would offer it: the old run
/// stops submitting and the new version runs in this `run --once`, as in the daemon. A path
/// found empty (a broken save moved to `rejected/`, an editor's delete-and-write) is looked
/// at on; a link or a folder put there is not offered (links are never followed; the
/// daemon's watcher rejects them).
async fn follow_resaves(
    pipeline: pipeline::Handle,
    offered: Arc<std::sync::Mutex<Vec<(PathBuf, watcher::Fingerprint)>>>,
    settle: Duration,
) {
    let lock = || {
        offered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    // The list keeps its order: index `i` is the same path throughout.
    let paths: Vec<PathBuf> = lock().iter().map(|(path, _)| path.clone()).collect();
    if paths.is_empty() {
        return;
    }
    // The version the looks see at each path, and since when.
    let mut seen: Vec<Option<(watcher::Fingerprint, tokio::time::Instant)>> =
        vec![None; paths.len()];
    loop {
        tokio::time::sleep(ONCE_RESAVE_LOOK).await;
        let looked = paths.clone();
        let Ok(versions) = tokio::task::spawn_blocking(move || {
            looked
                .iter()
                .map(|p| plain_file_version(p))
                .collect::<Vec<_>>()
        })
        .await
        else {
            return;
        };
        let at = tokio::time::Instant::now();
        for (i, now) in versions.into_iter().enumerate() {
            let Some(now) = now else {
                seen[i] = None;
                continue;
            };
            let since = match seen[i] {
                Some((version, since)) if version == now => since,
                _ => {
                    seen[i] = Some((now, at));
                    continue;
                }
            };
            if lock()[i].1 == now || at.duration_since(since) < settle {
                continue;
            }
            let path = &paths[i];
            info!(manifest = %crate::text::Escaped::path(path), "A manifest was saved again while `run --once` runs; its new version is taken in");
            pipeline
                .offer(watcher::Candidate {
                    path: path.clone(),
                    fingerprint: now,
                    kind: watcher::CandidateKind::Manifest,
                })
                .await;
            lock()[i].1 = now;
        }
    }
}

/// The daemon proper: the first scan, READY, then the watcher feeds candidates until shutdown,
/// with SIGHUP reloads, `STATUS=` lines and watchdog pings on the way.
async fn run_watching(
    pipeline: &pipeline::Handle,
    config: &Config,
    opts: &RunOptions,
    cancel: &CancellationToken,
    inbox_claim: &mut watcher::InboxClaim,
    mut hangup: Option<tokio::signal::unix::Signal>,
    in_force: InForce,
) -> Result<(), FatalError> {
    // The first scan is done before READY, so `systemctl start` returns once the inbox is known.
    // (Unreadable subfolders were named in a WARN; the daemon takes them in once readable.)
    first_scan(pipeline, config).await?;
    let _ = sd_notify::notify(&[
        NotifyState::Ready,
        NotifyState::Status(&status_line(pipeline)),
    ]);
    info!("Ready");

    // Bounded: a burst of drops waits in the watcher rather than in memory here.
    let (tx, mut rx) = mpsc::channel(64);
    let watch = tokio::spawn(watcher::run(
        config.folders.inbox.clone(),
        config.watch,
        tx,
        cancel.child_token(),
    ));
    // Candidates go to intake from a task of their own: the loop below never waits for intake.
    let forward = {
        let pipeline = pipeline.clone();
        tokio::spawn(async move {
            while let Some(candidate) = rx.recv().await {
                pipeline.offer(candidate).await;
            }
        })
    };
    info!(inbox = %config.folders.inbox.display(), "Watching the inbox");
    let watchdog = sd_notify::watchdog_enabled();
    let mut watchdog_tick =
        tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |d| d / 2));
    let mut status_tick = tokio::time::interval(STATUS_INTERVAL);
    // The inbox's health and lock are looked at as often as the inbox is rescanned; the lock
    // first one period after the start (the claim was just made: a lock file deleted in the
    // start's first milliseconds was made again before a second daemon could be refused by
    // the folder's lock), the health at once.
    let mut claim_tick = tokio::time::interval(config.watch.rescan.max(Duration::from_secs(1)));
    let mut claim_made_now = true;
    let mut taken = None;
    // The store's folder as opened: looked at with the inbox's lock (see `store_folder_gone`).
    let store_dir = config.folders.state.join(crate::store::SCHEMA_DIR);
    let store_identity = crate::config::identity(&store_dir);
    let mut state_gone = None;
    let mut stuck = None;
    // The config in force: what a SIGHUP's file is compared with.
    let mut running = config.clone();
    // A SIGHUP's reading of the files, while it goes on (one at a time).
    let mut reading: Option<std::pin::Pin<Box<ReloadReading>>> = None;
    tokio::pin!(forward);
    loop {
        tokio::select! {
            _ = &mut forward => break,
            Some(()) = recv_hangup(&mut hangup) => {
                // Read off the loop: the watchdog, SIGTERM and the ticks go on meanwhile.
                if reading.is_some() {
                    warn!("SIGHUP ignored: the config of the previous one is still being read");
                } else {
                    reading = Some(Box::pin(read_for_reload(opts.config_path.clone())));
                }
            }
            read = async { reading.as_mut().expect("guarded").await }, if reading.is_some() => {
                reading = None;
                reload(
                    pipeline,
                    opts.config_path.as_deref(),
                    &mut running,
                    &in_force,
                    read,
                );
            }
            _ = watchdog_tick.tick(), if watchdog.is_some() => {
                let _ = sd_notify::notify(&[NotifyState::Watchdog]);
            }
            _ = status_tick.tick() => {
                let _ = sd_notify::notify(&[NotifyState::Status(&status_line(pipeline))]);
                if let Some(err) = store_stuck(pipeline, &config.folders.state) {
                    error!(error = %err, "Stopping");
                    stuck = Some(err);
                    cancel.cancel();
                    break;
                }
            }
            _ = claim_tick.tick() => {
                if let Some(err) = store_folder_gone(&store_dir, store_identity) {
                    error!(error = %err, "Stopping");
                    state_gone = Some(err);
                    cancel.cancel();
                    break;
                }
                let inbox = &config.folders.inbox;
                pipeline.set_inbox_problem(match std::fs::metadata(inbox) {
                    Ok(meta) if meta.is_dir() => None,
                    Ok(_) => Some(format!("the inbox {} is no folder any more; nothing dropped is taken in until it is one again", inbox.display())),
                    Err(err) => Some(format!("the inbox {} cannot be read ({}); nothing dropped is taken in until it is back", inbox.display(), crate::os_error::OsCause(&err))),
                });
                if std::mem::take(&mut claim_made_now) {
                    continue;
                }
                if let Err(err) = inbox_claim.keep(&config.folders.inbox, &config.folders.state) {
                    // Another daemon took the inbox while its lock was gone: this one stops,
                    // or both would take in (and bill) every drop.
                    error!(error = %err, "The inbox's lock file was deleted or replaced, and another daemon holds the inbox now; stopping");
                    taken = Some(err);
                    cancel.cancel();
                    break;
                }
            }
        }
    }
    let watched = watch.await;
    if let Some(err) = taken {
        return Err(FatalError::InboxTaken(err));
    }
    if let Some(err) = state_gone {
        return Err(err);
    }
    if let Some(err) = stuck {
        return Err(err);
    }
    match watched {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(FatalError::Watcher(err)),
        Err(join) => {
            error!(error = %join, "The watcher task panicked");
            Ok(())
        }
    }
}

/// How long the store may fail every write, while its folder takes writes, before the daemon
/// exits to be started again (a full disk freed: sled keeps the first I/O error it met).
const STORE_STUCK_AFTER: Duration = Duration::from_secs(30);

/// The store has failed every write for [`STORE_STUCK_AFTER`] while a file written and synced
/// in the state folder succeeds: the disk has room again, but the open store stays failed
/// (sled keeps its first I/O error), and only a new start reopens it.
fn store_stuck(pipeline: &pipeline::Handle, state: &Path) -> Option<FatalError> {
    let (for_how_long, why) = pipeline.store().write_failing()?;
    if for_how_long < STORE_STUCK_AFTER {
        return None;
    }
    let probe = state.join(".claid-write-probe");
    let writable = (|| -> std::io::Result<()> {
        use std::io::Write;
        let mut file = std::fs::File::create(&probe)?;
        file.write_all(&[0u8; 4096])?;
        file.sync_all()
    })();
    let _ = std::fs::remove_file(&probe);
    writable.ok()?;
    Some(FatalError::StoreStuck {
        state: state.to_path_buf(),
        for_how_long,
        why,
    })
}

/// The job store's folder deleted (or replaced) under the running daemon (a cleanup of the
/// state folder, an `rm` at the wrong place): what it records goes into files no longer
/// there, and the next start would open an empty store and submit, and bill, again every
/// image in flight, counted nowhere. It went on with one warning of a note it could not
/// write. A folder that cannot be looked at now (permissions) is no proof: `None`.
fn store_folder_gone(store_dir: &Path, opened: Option<(u64, u64)>) -> Option<FatalError> {
    use std::os::unix::fs::MetadataExt;
    let why = match std::fs::metadata(store_dir) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => "was deleted",
        Ok(meta) if opened.is_some_and(|opened| opened != (meta.dev(), meta.ino())) => {
            "was deleted and made again"
        }
        _ => return None,
    };
    Some(FatalError::StoreGone {
        path: store_dir.to_path_buf(),
        why,
    })
}

async fn recv_hangup(hangup: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match hangup {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

/// A digest of the API key `config` names (its file, or `CLAID_API_KEY`), to tell a rotated
/// key without keeping a second copy of it; `None` when it cannot be read.
fn key_digest(config: &Config) -> Option<String> {
    use sha2::Digest;
    let key = crate::config::load_api_key(&config.api).ok().flatten()?;
    Some(hex::encode(sha2::Sha256::digest(key.as_bytes())))
}

/// A digest of each file a start reads secrets from besides the API key (`None`: none, or
/// unreadable), by the key that names it: each storage's credentials file
/// (`storages.NAME.credentials_file`), each alert sink's URL file (`alerts.NAME.url_file`,
/// whose URL is read at start: a rotated webhook URL was said to be reloaded, and alerts kept
/// going to the old one), and the webhook receiver's secret (`webhook.secret_file`).
fn secret_file_digests(config: &Config) -> std::collections::BTreeMap<String, SecretFile> {
    use sha2::Digest;
    let digest = |path: Option<&Path>| {
        path.and_then(|path| std::fs::read(path).ok())
            .map(|bytes| hex::encode(sha2::Sha256::digest(&bytes)))
    };
    let storages = config.storages.iter().map(|(name, entry)| {
        (
            format!("storages.{name}.credentials_file"),
            SecretFile {
                section: format!("storages.{name}"),
                changed: "the keys in it changed",
                digest: digest(entry.credentials_file.as_deref()),
            },
        )
    });
    let sinks = config.alerts.iter().map(|sink| {
        (
            format!("alerts.{}.url_file", sink.name),
            SecretFile {
                section: format!("alerts.{}", sink.name),
                changed: "the URL in it changed",
                digest: digest(Some(&sink.url_file)),
            },
        )
    });
    // The webhook's secret (read when the receiver starts): a rotated secret was reloaded
    // without a word, the old one kept verifying, and the new one's webhooks were refused 401.
    let webhook = config.webhook.iter().map(|hook| {
        (
            "webhook.secret_file".to_owned(),
            SecretFile {
                section: "webhook".to_owned(),
                changed: "the secret in it changed",
                digest: digest(hook.secret_file.as_deref()),
            },
        )
    });
    storages.chain(sinks).chain(webhook).collect()
}

/// What a SIGHUP compares a new config's secret files with: the digest of the API key file
/// ([`key_digest`]) and of the other files secrets are read from ([`secret_file_digests`]), as
/// the start read them.
struct InForce {
    key: Option<String>,
    secret_files: std::collections::BTreeMap<String, SecretFile>,
}

/// A file the config reads a secret from, as a SIGHUP compares it with the one in force.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SecretFile {
    /// The config section a restart applies it with (a change there is named already).
    section: String,
    /// What a new digest means, for `not_applied`.
    changed: &'static str,
    /// SHA-256 of its content; `None` when it cannot be read.
    digest: Option<String>,
}

impl SecretFile {
    /// Whether the changed config key `key` names this file's section already (`storages`,
    /// `storages.NAME…`; `alerts`, `alerts.NAME…`).
    fn named_by(&self, key: &str) -> bool {
        // One is the other, or holds it: a whole part of a dotted key, never a part's start
        // (`storages.catalogue` is another storage than `storages.catalog`).
        let within = |inner: &str, outer: &str| {
            inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        };
        within(key, &self.section) || within(&self.section, key)
    }
}

/// How long a SIGHUP's reading of the config and the files it names may take: a file on a
/// share that hangs must not hold the supervisor (SIGTERM, the watchdog) with it.
const RELOAD_READ_LIMIT: Duration = Duration::from_secs(5);

/// What a SIGHUP read: the config and what a start would refuse in it, the digests of the
/// key file and of the other files it reads secrets from ([`secret_file_digests`]); or why it
/// could not be read.
struct ReloadRead {
    loaded: Result<(Config, Vec<String>), crate::config::ConfigError>,
    key: Option<String>,
    secret_files: std::collections::BTreeMap<String, SecretFile>,
}

/// A SIGHUP's reading of the config ([`read_for_reload`]).
type ReloadReading = dyn std::future::Future<Output = Option<Result<ReloadRead, String>>> + Send;

/// A reading of the config that outlived [`RELOAD_READ_LIMIT`] still holds its thread (a file
/// on a share that hangs): no other starts until it ends, so hung reads never take more than
/// one of the blocking pool's threads.
static RELOAD_THREAD_BUSY: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Reads the config for a SIGHUP off the runtime, within [`RELOAD_READ_LIMIT`]; `None` without
/// a config file, `Some(Err(why))` when it cannot be read in time or is no regular file (a
/// FIFO would block the read until something writes into it).
async fn read_for_reload(path: Option<PathBuf>) -> Option<Result<ReloadRead, String>> {
    use std::sync::atomic::Ordering;
    let path = path?;
    if RELOAD_THREAD_BUSY.swap(true, Ordering::AcqRel) {
        return Some(Err(
            "an earlier reading of the config has not returned yet (a file on a share that does not answer?)"
                .to_owned(),
        ));
    }
    let read = tokio::task::spawn_blocking(move || {
        let _done = ReloadThreadDone;
        match std::fs::metadata(&path) {
            Ok(meta) if !meta.is_file() => {
                return Err(
                    "it is not a regular file (a FIFO, a device or a folder): point the daemon at a config file"
                        .to_owned(),
                );
            }
            _ => {}
        }
        // Each file a start would read is read once: the problems a start would refuse.
        let loaded = crate::config::load(&path).map(|config| {
            let problems = would_not_start(&config);
            (config, problems)
        });
        let (key, secret_files) = match &loaded {
            Ok((config, _)) => (key_digest(config), secret_file_digests(config)),
            Err(_) => (None, Default::default()),
        };
        Ok(ReloadRead {
            loaded,
            key,
            secret_files,
        })
    });
    Some(match tokio::time::timeout(RELOAD_READ_LIMIT, read).await {
        Ok(Ok(read)) => read,
        Ok(Err(panicked)) => Err(format!("reading it failed: {panicked}")),
        Err(_) => Err(format!(
            "it could not be read within {} s (a file on a share that does not answer?)",
            RELOAD_READ_LIMIT.as_secs()
        )),
    })
}

/// Marks the reload thread free when its reading returns.
struct ReloadThreadDone;

impl Drop for ReloadThreadDone {
    fn drop(&mut self) {
        RELOAD_THREAD_BUSY.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// SIGHUP: takes the config `read` by [`read_for_reload`]; an invalid one is refused and the
/// running one kept. Of a valid one, the [`RELOADABLE`](crate::config::print::RELOADABLE)
/// sections apply to new work and `running` takes them; any other changed key is named as
/// waiting for a restart.
fn reload(
    pipeline: &pipeline::Handle,
    path: Option<&Path>,
    running: &mut Config,
    in_force: &InForce,
    read: Option<Result<ReloadRead, String>>,
) {
    let (Some(path), Some(read)) = (path, read) else {
        warn!("SIGHUP ignored: the daemon was started without a config file to re-read");
        return;
    };
    let _ = sd_notify::notify(&[NotifyState::Reloading]);
    let ReloadRead {
        loaded,
        key,
        secret_files,
    } = match read {
        Ok(read) => read,
        Err(why) => {
            error!(config = %path.display(), "Config reload refused: {why}; the running config stays in force");
            let _ = sd_notify::notify(&[NotifyState::Ready]);
            return;
        }
    };
    match loaded {
        Ok((_, problems)) if !problems.is_empty() => {
            // Applied, it would look fine until the next start (a reboot) refused it, with
            // exit 64, which systemd does not restart: said now, and the running one kept.
            error!(config = %path.display(), problems = problems.len(), "Config reload refused: the file as written would not start the daemon; the running config stays in force (fix it before the next restart)");
            for problem in &problems {
                error!(config = %path.display(), "{}", Escaped::str(problem));
            }
        }
        Ok((config, _)) => {
            let mut restart = crate::config::print::restart_keys(running, &config);
            // The same key file with another key in it (a rotated key).
            if key != in_force.key && !restart.iter().any(|key| key.starts_with("api.api_key")) {
                restart.push("api.api_key_file (the key in it changed)".to_owned());
            }
            // The same credentials or URL file with other keys or another URL in it.
            for (file_key, file) in secret_files {
                if in_force
                    .secret_files
                    .get(&file_key)
                    .is_some_and(|running| running.digest != file.digest)
                    && !restart.iter().any(|key| file.named_by(key))
                {
                    restart.push(format!("{file_key} ({})", file.changed));
                }
            }
            pipeline.reload(config.profiles.clone(), policies(&config), config.limits);
            running.profiles = config.profiles;
            running.limits = config.limits;
            running.on_output_exists = config.on_output_exists;
            running.on_manifest_done = config.on_manifest_done;
            running.in_doubt = config.in_doubt;
            if restart.is_empty() {
                info!(
                    config = %path.display(),
                    "Reloaded the config: profiles, policies and limits apply to new work"
                );
            } else {
                warn!(
                    config = %path.display(),
                    not_applied = %restart.join(", "),
                    "Reloaded the config: profiles, policies and limits apply to new work; the other changed keys are NOT in force until a restart (systemctl restart claid-hotfolder)"
                );
            }
        }
        // One line per problem, with its line and key: a log line holds no line breaks.
        Err(crate::config::ConfigError::Invalid { problems, .. }) => {
            error!(config = %path.display(), problems = problems.len(), "Config reload refused; the running config stays in force");
            for problem in &problems {
                match problem.line {
                    Some(line) => {
                        error!(config = %path.display(), line, key = %problem.key, "Config problem: {}", problem.message)
                    }
                    None => {
                        error!(config = %path.display(), key = %problem.key, "Config problem: {}", problem.message)
                    }
                }
            }
        }
        Err(err) => {
            error!(config = %path.display(), error = %err, "Config reload refused; the running config stays in force");
        }
    }
    let _ = sd_notify::notify(&[NotifyState::Ready]);
}

/// What a start would refuse in `config` beyond its own validity: a folder that is missing
/// (where the daemon would not create it) or is no folder, and every file problem of
/// [`start_file_problems`]. One sentence each.
fn would_not_start(config: &Config) -> Vec<String> {
    let mut problems: Vec<String> = check_folders(config)
        .iter()
        .map(ToString::to_string)
        .collect();
    problems.extend(
        start_file_problems(config, false, &mut Vec::new())
            .into_iter()
            .map(|problem| problem.text),
    );
    problems
}

/// A file (or path) a config names that the daemon's start cannot use.
pub struct FileProblem {
    /// What it is for: `API key`, `webhook`, `dashboard`, `alert`, `admin`.
    pub what: &'static str,
    pub text: String,
    /// The exit code a start refused for it would end with.
    pub code: i32,
}

/// The files a start reads beyond its folders, read as the start reads them: the API key (and
/// that there is one, `embedded` aside), the webhook's secret, the admin socket's path, the
/// dashboard's token and users files, and each alert sink's URL file. Every problem is told,
/// not the first alone. `notes` gets what a start would only warn about (a weak secret, a key
/// file others may read). With `unseen_credentials` (`validate`, run outside the service), a
/// systemd credential (`/run/credentials/…`) that is not there, which exists only for the
/// running service, is left to it and named in `notes`.
pub fn start_file_problems(
    config: &Config,
    unseen_credentials: bool,
    notes: &mut Vec<String>,
) -> Vec<FileProblem> {
    let unseen = |path: Option<&Path>| {
        unseen_credentials
            && path.is_some_and(|p| p.starts_with("/run/credentials/") && !p.exists())
    };
    let mut problems = Vec::new();
    let mut problem = |what, text: String, code| problems.push(FileProblem { what, text, code });
    if let Some(hook) = &config.webhook {
        if unseen(hook.secret_file.as_deref()) {
            notes.push("note: webhook.secret_file is a systemd credential, readable only by the running service: not checked".to_owned());
        } else {
            match webhook::Secret::load(hook) {
                Err(err) => problem("webhook", err.to_string(), crate::exit::of_webhook(&err)),
                Ok(secret) => notes.extend(secret.weakness().map(|w| format!("warning: {w}"))),
            }
        }
    }
    if unseen(config.api.api_key_file.as_deref()) {
        notes.push("note: api.api_key_file is a systemd credential, readable only by the running service: not checked".to_owned());
    } else {
        match crate::config::load_api_key(&config.api) {
            Err(err) => problem("API key", err.to_string(), crate::exit::of_config(&err)),
            // `embedded` needs no key.
            Ok(None) if !matches!(config.api.base_url, crate::config::BaseUrl::Embedded) => {
                problem(
                    "API key",
                    FatalError::NoApiKey.to_string(),
                    crate::exit::USAGE,
                );
            }
            Ok(_) => notes.extend(
                crate::config::api_key_exposure(&config.api).map(|w| format!("warning: {w}")),
            ),
        }
    }
    // The admin socket's path: the start refuses one that names anything but a socket.
    if let Some(err) = crate::admin::not_a_socket(&config.admin.socket) {
        problem("admin", err.to_string(), crate::exit::USAGE);
    }
    if let Some(web) = &config.web
        && !unseen(web.token_file.as_deref())
        && let Err(err) = crate::web::auth::Auth::new(web)
    {
        let err = FatalError::Web(err);
        problem("dashboard", err.to_string(), crate::exit::of_fatal(&err));
    }
    // Each storage's credentials (its file, or the `AWS_*` variables), read as the start
    // reads them: a SIGHUP took a deleted or broken file with a warning, and the next
    // restart stopped with 64.
    for (name, entry) in &config.storages {
        if unseen(entry.credentials_file.as_deref()) {
            notes.push(format!("note: storages.{name}.credentials_file is a systemd credential, readable only by the running service: not checked"));
            continue;
        }
        let one = std::collections::BTreeMap::from([(name.clone(), entry.clone())]);
        if let Err(err) = crate::storages::Storages::open(&one) {
            problem("storage", err.to_string(), err.exit_code());
        }
    }
    for sink in config
        .alerts
        .iter()
        .filter(|sink| !unseen(Some(&sink.url_file)))
    {
        if let Err(err) = crate::alerts::check_sink(sink) {
            let err = FatalError::Alerts(err);
            problem("alert", err.to_string(), crate::exit::of_fatal(&err));
        }
    }
    problems
}

/// The operator's policy choices of a config, as the pipeline takes them.
fn policies(config: &Config) -> Policies {
    Policies {
        on_output_exists: config.on_output_exists,
        on_manifest_done: config.on_manifest_done,
        in_doubt: config.in_doubt,
    }
}

/// One `STATUS=` line for systemd.
fn status_line(pipeline: &pipeline::Handle) -> String {
    let t = pipeline.totals();
    let paused = match pipeline.health() {
        pipeline::Health::Healthy => String::new(),
        pipeline::Health::Paused { reason, .. } => format!("; PAUSED: {reason}"),
    };
    format!(
        "{} in flight, {} queued, {} done, {} failed, {} rejected manifests{paused}",
        pipeline.in_flight(),
        pipeline.queued(),
        t.done,
        t.failed,
        t.rejected
    )
}

/// Checks the operator's folders and creates the daemon's own. The state folder (with the
/// copies of running manifests) is always created; the inbox, outbox, archive and rejected
/// folders only with `folders.create: true` or for the embedded demo, so a typo in a path
/// stops the daemon with the key and the path instead of creating a folder nobody uses.
fn prepare_folders(config: &Config, copies: &Path) -> Result<(), FatalError> {
    let folders = &config.folders;
    let create = folders.create || config.api.base_url == BaseUrl::Embedded;
    if let Some(err) = check_folders(config).into_iter().next() {
        return Err(err);
    }
    for (key, path, needs) in operator_folders(config) {
        if create {
            create_folder(path)?;
        }
        check_access(key, path, needs)?;
    }
    for path in [&folders.state, copies] {
        create_folder(path)?;
    }
    // Checked again now that every folder exists: one created through a symlinked parent may
    // have landed in the inbox, which the config check could only compare as written.
    let others = [
        &folders.outbox,
        &folders.archive,
        &folders.rejected,
        &folders.state,
    ]
    .map(|path| Some(path.as_path()));
    match crate::config::folder_overlaps(&folders.inbox, others)
        .into_iter()
        .next()
    {
        Some((key, why)) => Err(FatalError::Overlap { key, why }),
        None => Ok(()),
    }
}

/// The operator's folders that are missing or are not folders (`validate` reports them all; the
/// daemon stops at the first). A missing one is no problem with `folders.create: true` or
/// `api.base_url: embedded`, where the daemon creates them (the state folder always is); a file
/// where a folder should be always is.
pub fn check_folders(config: &Config) -> Vec<FatalError> {
    let folders = &config.folders;
    // Missing folders are created when the config says so (and always the state folder); a
    // file where a folder should be is a problem either way.
    let created = folders.create || config.api.base_url == BaseUrl::Embedded;
    let mut problems = Vec::new();
    for (key, path, made) in [
        ("folders.inbox", &folders.inbox, created),
        ("folders.outbox", &folders.outbox, created),
        ("folders.archive", &folders.archive, created),
        ("folders.rejected", &folders.rejected, created),
        ("folders.state", &folders.state, true),
    ] {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => problems.push(FatalError::NotAFolder {
                key,
                path: path.clone(),
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && !made => {
                problems.push(FatalError::MissingFolder {
                    key,
                    path: path.clone(),
                    parent: nearest_existing(path),
                });
            }
            // Under a file (`notes.txt/state`): no folder can ever be made there, whatever
            // `folders.create` says; the file is named.
            Err(_) if file_above(path).is_some() => problems.push(FatalError::UnderAFile {
                key,
                path: path.clone(),
                file: file_above(path).unwrap_or_default(),
            }),
            // Not readable by this user: the access check names it.
            Err(_) => {}
        }
    }
    problems
}

/// The folders the daemon writes that sit on a filesystem mounted read-only (`validate` tells
/// them as the start would: the start stops at them). Only that: whether this user may write
/// them says nothing of the daemon's user, who runs the start.
pub fn read_only_folders(config: &Config) -> Vec<FatalError> {
    operator_folders(config)
        .into_iter()
        .chain([("folders.state", &config.folders.state, Needs::ReadWrite)])
        .filter_map(|(key, path, needs)| check_access(key, path, needs).err())
        .filter(|err| {
            matches!(err, FatalError::FolderNotWritable { cause, .. }
                if cause.raw_os_error() == Some(libc::EROFS))
        })
        .collect()
}

/// The operator's folders the daemon reads or writes, with what it needs of each: with
/// `on_manifest_done: keep`, manifests and recipe images stay where they are, and the inbox is
/// only read (an invalid manifest that cannot be moved to `rejected/` stays, with an error
/// logged).
fn operator_folders(config: &Config) -> [(&'static str, &PathBuf, Needs); 4] {
    let folders = &config.folders;
    let inbox_needs = if config.on_manifest_done == OnManifestDone::Keep {
        Needs::Read
    } else {
        Needs::ReadWrite
    };
    [
        ("folders.inbox", &folders.inbox, inbox_needs),
        ("folders.outbox", &folders.outbox, Needs::ReadWrite),
        ("folders.archive", &folders.archive, Needs::ReadWrite),
        ("folders.rejected", &folders.rejected, Needs::ReadWrite),
    ]
}

/// Whether this process may do what `needs` says to the folder `path` (config key `key`).
fn check_access(key: &'static str, path: &Path, needs: Needs) -> Result<(), FatalError> {
    rustix::fs::accessat(
        rustix::fs::CWD,
        path,
        needs.access(),
        rustix::fs::AtFlags::EACCESS,
    )
    .map_err(|cause| FatalError::FolderNotWritable {
        key,
        path: path.to_path_buf(),
        needs: needs.words(),
        cause: cause.into(),
    })
}

/// The nearest existing ancestor of `path` when it is not a folder (a regular file, say).
fn file_above(path: &Path) -> Option<PathBuf> {
    path.ancestors()
        .skip(1)
        .filter(|dir| !dir.as_os_str().is_empty())
        .find_map(|dir| match std::fs::metadata(dir) {
            Ok(meta) => Some((!meta.is_dir()).then(|| dir.to_path_buf())),
            Err(_) => None,
        })
        .flatten()
}

/// The access the daemon needs to a folder.
#[derive(Debug, Clone, Copy)]
enum Needs {
    Read,
    ReadWrite,
}

impl Needs {
    fn access(self) -> rustix::fs::Access {
        use rustix::fs::Access;
        match self {
            Needs::Read => Access::READ_OK | Access::EXEC_OK,
            Needs::ReadWrite => Access::READ_OK | Access::WRITE_OK | Access::EXEC_OK,
        }
    }

    fn words(self) -> &'static str {
        match self {
            Needs::Read => "read",
            Needs::ReadWrite => "read and write",
        }
    }
}

fn create_folder(path: &Path) -> Result<(), FatalError> {
    std::fs::create_dir_all(path).map_err(|cause| FatalError::Folder {
        path: path.to_path_buf(),
        cause,
    })
}

/// The nearest folder above `path` that exists (`/` at worst).
fn nearest_existing(path: &Path) -> PathBuf {
    path.ancestors()
        .skip(1)
        .find(|dir| dir.is_dir())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

/// Opens the store; when another daemon holds it, names that daemon's PID. Records our PID.
fn open_store(state: &Path) -> Result<(Store, Unfinished), FatalError> {
    match Store::open_for_resume(state) {
        Ok(opened) => {
            let _ = std::fs::write(state.join(PID_FILE), format!("{}\n", std::process::id()));
            Ok(opened)
        }
        Err(StoreError::Locked { path }) => {
            let pid = std::fs::read_to_string(state.join(PID_FILE))
                .map(|p| p.trim().to_owned())
                .unwrap_or_else(|_| "unknown".to_owned());
            Err(FatalError::AlreadyRunning { path, pid })
        }
        Err(err) => Err(err.into()),
    }
}

pub use crate::text::error_chain;

/// The progress bar of `run --once` over every tracked job, refreshed from the pipeline's
/// counters; shown on the terminal the log lines go to, so they are written above it.
struct Progress {
    bar: indicatif::ProgressBar,
    refresh: tokio::task::JoinHandle<()>,
    /// Routes log lines around the bar until the bar is finished.
    _shown: crate::logging::ShownBar,
}

impl Progress {
    fn start(pipeline: &pipeline::Handle, terminal: &crate::logging::Terminal) -> Progress {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} images {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let shown = terminal.show(bar.clone());
        let refresh = {
            let (pipeline, bar) = (pipeline.clone(), bar.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(200));
                loop {
                    tick.tick().await;
                    Progress::update(&bar, &pipeline);
                }
            })
        };
        Progress {
            bar,
            refresh,
            _shown: shown,
        }
    }

    fn update(bar: &indicatif::ProgressBar, pipeline: &pipeline::Handle) {
        let t = pipeline.totals();
        bar.set_length(t.jobs);
        bar.set_position(t.done + t.failed + t.held);
        bar.set_message(format!("({} failed)", t.failed));
    }

    /// Draws the final counts and leaves the bar on the screen; later lines go below it.
    fn finish(self, pipeline: &pipeline::Handle) {
        self.refresh.abort();
        Progress::update(&self.bar, pipeline);
        self.bar.finish();
    }
}

#[cfg(test)]
mod tests {
    /// A SIGHUP names a changed secret file only when no changed key names its section already.
    #[test]
    fn a_secret_file_is_named_by_its_section_or_a_key_above_it() {
        let file = super::SecretFile {
            section: "storages.catalog".to_owned(),
            changed: "the keys in it changed",
            digest: None,
        };
        assert!(file.named_by("storages"));
        assert!(file.named_by("storages.catalog"));
        assert!(file.named_by("storages.catalog.credentials_file"));
        assert!(!file.named_by("storages.cat"));
        assert!(!file.named_by("storages.catalogue"));
        assert!(!file.named_by("alerts"));
    }

    use super::*;

    /// The fix a folder error suggests follows its cause: a read-only file system is no
    /// matter of permissions.
    #[test]
    fn a_folder_error_suggests_the_fix_for_its_cause() {
        let error = |errno| FatalError::FolderNotWritable {
            key: "folders.outbox",
            path: PathBuf::from("/srv/out"),
            needs: "read and write",
            cause: std::io::Error::from_raw_os_error(errno),
        };
        let text = error(libc::EROFS).to_string();
        assert!(
            text.contains("EROFS: read-only file system; it is on a file system mounted read-only"),
            "{text}"
        );
        assert!(!text.contains("group claid-hotfolder"), "{text}");
        let text = error(libc::EACCES).to_string();
        assert!(
            text.contains("give the user it runs as that access"),
            "{text}"
        );
    }
}
