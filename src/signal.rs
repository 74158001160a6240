//! A future that completes on SIGTERM or SIGINT (and, for `run --once`, SIGHUP) and logs which
//! one arrived.
//!
//! systemd stops the service with SIGTERM; an operator in a terminal presses Ctrl-C (SIGINT).
//! Both mean "drain and exit". A daemon takes SIGHUP as "reload" (see `daemon`); `run --once`
//! has nothing to reload, and a SIGHUP there is its terminal going away (an SSH session that
//! dropped): drained like a Ctrl-C, so what Claid is working on is not cut off in doubt.

use tokio::signal::unix::{SignalKind, signal};

/// Completes when the process receives SIGTERM or SIGINT, or SIGHUP when `hangup` is set. If
/// the handlers cannot be installed (which only happens when the runtime has no signal
/// driver), it never completes and says so.
pub async fn shutdown(hangup: bool) {
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
    let mut hup = if hangup {
        signal(SignalKind::hangup()).ok()
    } else {
        None
    };
    let hung_up = async {
        match hup.as_mut() {
            Some(hup) => hup.recv().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "Received shutdown signal"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "Received shutdown signal"),
        _ = hung_up => tracing::warn!(signal = "SIGHUP", "The terminal went away (SIGHUP): stopping as for Ctrl-C; unfinished jobs resume at the next run"),
    }
}
