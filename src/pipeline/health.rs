//! Whether the API takes the daemon's calls: paused after a systemic refusal (401, 402, 403:
//! submitting stops, queued jobs are kept), and failing while calls fail (no answer at all, or
//! errors) without any succeeding. `run --once` reads both to end instead of waiting for ever.

use std::sync::{Mutex, PoisonError};

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{error, info};

use crate::claid::ClaidError;
use crate::pipeline::notices::{Notice, Notices};

/// Whether the daemon may submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// The API refused the key, the credits or the scope: `status` is 401, 402 or 403.
    Paused {
        reason: String,
        status: u16,
    },
}

/// Shared by the submitter and every job task.
#[derive(Debug)]
pub struct HealthState {
    health: watch::Sender<Health>,
    inner: Mutex<Inner>,
    /// Told when submitting pauses and resumes.
    notices: Notices,
}

#[derive(Debug, Default)]
struct Inner {
    /// When a call last succeeded.
    last_ok: Option<Instant>,
    /// Since when calls fail without one succeeding, and the last failure in words (for a
    /// connection: host, port and the operating system's cause).
    failing: Option<(Instant, String)>,
}

impl HealthState {
    pub fn new(notices: Notices) -> HealthState {
        HealthState {
            health: watch::channel(Health::Healthy).0,
            inner: Mutex::new(Inner::default()),
            notices,
        }
    }

    pub fn current(&self) -> Health {
        self.health.borrow().clone()
    }

    /// A receiver that sees every change.
    pub fn subscribe(&self) -> watch::Receiver<Health> {
        self.health.subscribe()
    }

    /// The API answered a call successfully: not paused, not failing.
    pub fn ok(&self) {
        {
            let mut inner = self.lock();
            inner.last_ok = Some(Instant::now());
            inner.failing = None;
        }
        let changed = self.health.send_if_modified(|h| {
            if *h == Health::Healthy {
                return false;
            }
            *h = Health::Healthy;
            true
        });
        if changed {
            info!("The API accepts requests again; submitting resumed");
            self.notices.send(Notice::Resumed);
        }
    }

    /// A systemic refusal (401/402/403): pause submitting.
    pub fn pause(&self, err: &ClaidError, status: u16) {
        let reason = crate::daemon::error_chain(err);
        let changed = self.health.send_if_modified(|h| {
            if matches!(h, Health::Paused { .. }) {
                return false;
            }
            *h = Health::Paused {
                reason: reason.clone(),
                status,
            };
            true
        });
        if changed {
            error!(error = %reason, "The API refused the daemon's credentials or credits; submitting is paused, queued jobs are kept");
            self.notices.send(Notice::Paused { status, reason });
        }
    }

    /// A call failed transiently (no answer, a 5xx, a timeout).
    pub fn failed(&self, err: &ClaidError) {
        let mut inner = self.lock();
        let why = crate::daemon::error_chain(err);
        match &mut inner.failing {
            Some((_, last)) => *last = why,
            None => inner.failing = Some((Instant::now(), why)),
        }
    }

    /// Whether some call succeeded after `t`: a transient failure since then is the job's
    /// own, not an outage.
    pub fn succeeded_since(&self, t: Instant) -> bool {
        self.lock().last_ok.is_some_and(|at| at > t)
    }

    /// How long calls have failed without one succeeding, and the last failure.
    pub fn failing(&self) -> Option<(std::time::Duration, String)> {
        self.lock()
            .failing
            .as_ref()
            .map(|(since, why)| (since.elapsed(), why.clone()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
