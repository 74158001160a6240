//! The Claid-compatible emulator: an axum server that follows docs/claid-api.md under `/v1` and
//! `/v1-beta1`, performs real image operations, and injects scripted faults.
//!
//! Entry points: [`run`] (serve a listener until a shutdown future completes, used by
//! `claid-hotfolder emulator` and `api.base_url: embedded`) and [`spawn`] (tests: bind
//! `127.0.0.1:0` and get a [`Handle`]). What is real and what is simulated: `docs/emulator.md`.
//! Both fail only when a storage connector of the scenario cannot be set up.

mod batch;
pub mod imaging;
mod inputs;
mod limits;
mod scenario;
mod server;
mod stats;
mod storage;
mod storage_file;
mod webhook;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use batch::MAX_BATCH_IMAGES;
pub use inputs::{MAX_DEMO_SIDE, demo_image};
pub use limits::{RateLimiter, RateWindow, Verdict};
pub use scenario::{
    DEFAULT_BATCH_PARALLELISM, DEFAULT_REORDER_HOLD, FaultShares, Latency, LatencyParseError,
    ResultUrlForm, Scenario, ScenarioArgs, StoragesFile, WebhookBody, WebhookDigest,
};
pub use stats::{BatchTrace, Control, ControlState, RefusedCall, Stats, submit_key};
pub use storage::StorageConnector;
pub use storage_file::{StoragesFileError, load as load_storages_file};
pub use webhook::{SIGNATURE_HEADER, signature as webhook_signature};

/// Serves the emulator on `listener` until `shutdown` completes, then closes every connection.
pub async fn run(
    listener: TcpListener,
    scenario: Scenario,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = server::AppState::new(scenario, listener.local_addr()?)?;
    server::serve(listener, state, shutdown).await
}

/// Binds `127.0.0.1:0` and serves the emulator in a tokio task.
pub async fn spawn(scenario: Scenario) -> std::io::Result<Handle> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let state = server::AppState::new(scenario, addr)?;
    let control = state.control.clone();
    let recorder = Arc::clone(&state.recorder);
    let stop = CancellationToken::new();
    let task = tokio::spawn(server::serve(
        listener,
        state,
        stop.clone().cancelled_owned(),
    ));
    Ok(Handle {
        addr,
        control,
        recorder,
        stop,
        task,
    })
}

/// A running emulator (from [`spawn`]).
#[derive(Debug)]
pub struct Handle {
    addr: SocketAddr,
    /// Runtime toggles shared with the server.
    control: Control,
    /// The server's counters, read without an HTTP round trip.
    recorder: Arc<stats::Recorder>,
    /// Cancelled by [`Handle::shutdown`] to end the accept loop and every connection.
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Handle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// `http://127.0.0.1:P/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.recorder.snapshot()
    }
    /// Runtime toggles (402, 403, down).
    pub fn control(&self) -> Control {
        self.control.clone()
    }
    /// Stops the server and waits for the accept loop to end.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Err(err) = (&mut self.task).await {
            tracing::warn!(error = %err, "emulator task ended abnormally");
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // A test that forgets shutdown() must not leave a server running.
        self.stop.cancel();
    }
}
