//! Wiring and supervision: builds the components in startup order (clean temp files → open the
//! store → resume unfinished jobs → first scan → workers), owns the cancellation token and the
//! task tracker, runs the two-phase shutdown, and defines [`FatalError`], the only errors that
//! stop the daemon. Per-job errors never reach this module.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::claid::{ClaidError, Client, ClientConfig};
use crate::config::{BaseUrl, Config, ConfigError};
use crate::pipeline::{self, Deps, Folders, Policies};
use crate::store::{Store, StoreError};
use crate::{emulator, output, watcher};

/// The key the embedded emulator accepts when no key is configured.
const EMBEDDED_API_KEY: &str = "embedded-emulator-key";

/// Errors that stop the daemon. Everything else is recorded on a job or a manifest.
#[derive(Debug, thiserror::Error)]
pub enum FatalError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("no API key: set `api.api_key_file` or the CLAID_API_KEY environment variable")]
    NoApiKey,
    #[error("cannot create folder {path}")]
    Folder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot clean temporary files in the outbox")]
    CleanOutbox(#[source] output::OutputError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot build the API client")]
    Client(#[source] ClaidError),
    #[error("cannot start the embedded emulator")]
    Emulator(#[source] std::io::Error),
    #[error("the inbox watcher stopped")]
    Watcher(#[source] watcher::WatchError),
}

/// How `run` was asked to behave.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Process what is in the inbox now, wait for every job, then return.
    pub once: bool,
    /// Draw a progress bar (a TTY is attached).
    pub progress_bar: bool,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every job handled in this run is done (or unchanged).
    AllDone,
    /// Some job failed, is held in doubt, or some manifest was rejected.
    SomeFailed,
    /// Stopped by a signal before the work was finished (the rest resumes at the next start).
    Interrupted,
}

/// Runs the daemon until `shutdown` completes (or, with `once`, until the inbox is processed).
pub async fn run(
    config: Config,
    opts: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<Outcome, FatalError> {
    let api_key = crate::config::load_api_key(&config.api)?;

    // The embedded emulator lives as long as this function.
    let mut embedded = None;
    let (base_url, api_key) = match &config.api.base_url {
        BaseUrl::Embedded => {
            let handle = emulator::spawn(emulator::Scenario::default())
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
    for path in [
        &folders.inbox,
        &folders.outbox,
        &folders.archive,
        &folders.rejected,
        &folders.state,
    ] {
        std::fs::create_dir_all(path).map_err(|source| FatalError::Folder {
            path: path.clone(),
            source,
        })?;
    }
    let removed = output::clean_stale_tmp(&folders.outbox).map_err(FatalError::CleanOutbox)?;
    info!(removed, outbox = %folders.outbox.display(), "Removed stale temporary files");

    let store = Store::open(&folders.state)?;
    info!(state = %folders.state.display(), "Opened the job store");

    let client = Client::new(ClientConfig {
        base_url,
        api_key,
        requests_per_second: config.api.requests_per_second,
        requests_per_minute: config.api.requests_per_minute,
        request_timeout: config.api.request_timeout,
        max_download_bytes: config.limits.max_download_bytes,
    })
    .map_err(FatalError::Client)?;

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
        },
        policies: Policies {
            on_output_exists: config.on_output_exists,
            on_manifest_done: config.on_manifest_done,
            in_doubt: config.in_doubt,
        },
        poll: config.api.poll,
        limits: config.limits,
        profiles: config.profiles.clone(),
        max_in_flight: config.api.max_in_flight.get(),
        max_downloads: config.api.max_downloads.get(),
        cancel: cancel.clone(),
        tracker: tracker.clone(),
    });

    let summary = pipeline.resume().await?;
    info!(
        manifests = summary.manifests,
        queued = summary.queued,
        polling = summary.polling,
        downloading = summary.downloading,
        in_doubt_resubmitted = summary.in_doubt_resubmitted,
        in_doubt_held = summary.in_doubt_held,
        "Resumed unfinished work from the store"
    );
    tracker.spawn(pipeline.clone().run_submitter());

    let work = async {
        if opts.once {
            run_once(&pipeline, &config, opts).await
        } else {
            run_watching(&pipeline, &config, &cancel).await
        }
    };
    tokio::pin!(work);
    let shutdown_requested;
    let result = tokio::select! {
        res = &mut work => { shutdown_requested = false; res }
        () = shutdown => { shutdown_requested = true; Ok(()) }
    };

    // Phase 1: stop intake and waits; units of work in progress finish.
    cancel.cancel();
    tracker.close();
    let grace = config.shutdown_grace;
    if shutdown_requested {
        info!(grace = ?grace, "Shutting down: draining in-flight steps");
    }
    // Phase 2: after the grace period stop waiting; unfinished jobs resume at the next start.
    let graceful = tokio::time::timeout(grace, tracker.wait()).await.is_ok();
    if let Err(err) = store.flush() {
        error!(error = %err, "Cannot flush the store at shutdown");
    }
    if graceful {
        info!("Drained gracefully");
    } else {
        warn!(grace = ?grace, "Grace period over; parked jobs resume at the next start");
    }
    drop(embedded);
    result?;

    let totals = pipeline.totals();
    if shutdown_requested && opts.once {
        return Ok(Outcome::Interrupted);
    }
    if totals.failed > 0 || totals.held > 0 || totals.rejected > 0 {
        Ok(Outcome::SomeFailed)
    } else {
        Ok(Outcome::AllDone)
    }
}

/// `run --once`: every manifest in the inbox now, then wait for all jobs.
async fn run_once(
    pipeline: &pipeline::Handle,
    config: &Config,
    opts: RunOptions,
) -> Result<(), FatalError> {
    let candidates = watcher::scan_stable(&config.folders.inbox, &config.watch)
        .await
        .map_err(FatalError::Watcher)?;
    info!(manifests = candidates.len(), "Scanned the inbox");
    for candidate in candidates {
        pipeline.intake(candidate.path).await;
    }
    let bar = opts.progress_bar.then(|| progress_bar(pipeline));
    pipeline.wait_settled().await;
    if let Some(bar) = bar {
        bar.abort();
    }
    let totals = pipeline.totals();
    info!(
        manifests = totals.manifests,
        rejected = totals.rejected,
        jobs = totals.jobs,
        done = totals.done,
        unchanged = totals.unchanged,
        failed = totals.failed,
        held_in_doubt = totals.held,
        "Inbox processed"
    );
    Ok(())
}

/// The daemon proper: the watcher feeds candidates until shutdown.
async fn run_watching(
    pipeline: &pipeline::Handle,
    config: &Config,
    cancel: &CancellationToken,
) -> Result<(), FatalError> {
    // Bounded: a burst of drops waits in the watcher rather than in memory here.
    let (tx, mut rx) = mpsc::channel(64);
    let watch = tokio::spawn(watcher::run(
        config.folders.inbox.clone(),
        config.watch,
        tx,
        cancel.child_token(),
    ));
    info!(inbox = %config.folders.inbox.display(), "Watching the inbox");
    while let Some(candidate) = rx.recv().await {
        pipeline.intake(candidate.path).await;
    }
    match watch.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(FatalError::Watcher(err)),
        Err(join) => {
            error!(error = %join, "The watcher task panicked");
            Ok(())
        }
    }
}

/// A progress bar over every tracked job, refreshed from the pipeline's counters.
fn progress_bar(pipeline: &pipeline::Handle) -> tokio::task::JoinHandle<()> {
    let pipeline = pipeline.clone();
    tokio::spawn(async move {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} images {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            let t = pipeline.totals();
            bar.set_length(t.jobs);
            bar.set_position(t.done + t.failed + t.held);
            bar.set_message(format!("({} failed)", t.failed));
        }
    })
}
