//! Notices: what the pipeline tells the outside world as it happens (a run finished or was
//! refused, jobs failed or are held in doubt, submitting paused or resumed), on a broadcast
//! channel. Alerts and the dashboard subscribe; a slow or absent subscriber never slows the
//! pipeline (a lagging receiver loses the oldest notices and is told how many).

use std::collections::BTreeMap;

use tokio::sync::broadcast;

use crate::codes::FailureCode;
use crate::store::{ManifestCounts, ManifestId};

/// Notices kept for a subscriber that lags before the oldest are dropped.
const CAPACITY: usize = 1024;

/// One thing that happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// A run ended: every job done or failed (or superseded by a newer version of the file).
    ManifestFinished {
        id: ManifestId,
        rel: String,
        counts: ManifestCounts,
        /// Failed jobs by code.
        failures: BTreeMap<FailureCode, u64>,
        superseded: bool,
    },
    /// A file was refused into `rejected/` before anything was spent.
    ManifestRejected {
        rel: String,
        /// The start of the error file's text.
        problems: String,
    },
    /// One job failed.
    JobFailed {
        id: ManifestId,
        rel: String,
        code: FailureCode,
    },
    /// A run's jobs all ended, some held in doubt for a human (`replay --in-doubt`).
    InDoubtHeld {
        id: ManifestId,
        rel: String,
        held: u64,
    },
    /// The API refused the daemon in a way no retry mends (the key, the credits or the scope; a
    /// wrong `api.base_url`; a TLS handshake that fails): submitting is paused.
    Paused {
        refusal: crate::pipeline::health::Refusal,
        reason: String,
    },
    /// The API accepts requests again.
    Resumed,
}

/// The sending side, shared by the pipeline's tasks.
#[derive(Debug, Clone)]
pub struct Notices {
    sender: broadcast::Sender<Notice>,
}

impl Default for Notices {
    fn default() -> Notices {
        Notices {
            sender: broadcast::channel(CAPACITY).0,
        }
    }
}

impl Notices {
    /// Sends to every current subscriber; nobody listening is fine.
    pub fn send(&self, notice: Notice) {
        let _ = self.sender.send(notice);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.sender.subscribe()
    }
}
