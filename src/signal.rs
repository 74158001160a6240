//! A future that completes on SIGTERM or SIGINT and logs which one arrived.
//!
//! systemd stops the service with SIGTERM; an operator in a terminal presses Ctrl-C (SIGINT).
//! Both mean "drain and exit 0". SIGHUP is not handled here: it means "reload" (see `daemon`).

use tokio::signal::unix::{SignalKind, signal};

/// Completes when the process receives SIGTERM or SIGINT. If the handlers cannot be installed
/// (which only happens when the runtime has no signal driver), it never completes and says so.
pub async fn shutdown() {
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(error), _) | (_, Err(error)) => {
            tracing::error!(%error, "Cannot install SIGTERM/SIGINT handlers; stop the daemon with SIGKILL");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "Received shutdown signal"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "Received shutdown signal"),
    }
}
