//! The `web` and `alerts` sections of the config: the dashboard's listener and its
//! authentication, and the alert sinks (where messages go, in which format, for which events).
//! Checked by `config::check::web`; used by [`crate::web`] and [`crate::alerts`].

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the dashboard listens when `web` is present without `listen`.
pub const DEFAULT_WEB_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8788));
/// How long a sink waits with no progress while work is pending before `stalled` is sent.
pub const DEFAULT_STALLED_AFTER: Duration = Duration::from_secs(15 * 60);
/// How long a message is retried before it is dropped (and counted).
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(10 * 60);

/// `web`: the dashboard. Absent = off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WebConfig {
    /// The TCP address of the dashboard. A non-loopback address needs `users_file` or
    /// `token_file`.
    pub listen: SocketAddr,
    /// `NAME:PHC-HASH` lines written by `claid-hotfolder web-user add NAME`.
    pub users_file: Option<PathBuf>,
    /// A file holding one bearer token (for scripts: `Authorization: Bearer …`).
    pub token_file: Option<PathBuf>,
    /// Whether authenticated users may retry failed jobs, release in-doubt jobs and re-run
    /// rejected manifests.
    pub allow_actions: bool,
    /// The dashboard's address as people reach it (a reverse proxy with TLS), without a
    /// trailing slash; alert messages link to it. `None` = `http://<listen>`.
    pub public_url: Option<String>,
}

impl WebConfig {
    /// Whether anyone must log in: always when a users or token file is configured.
    pub fn auth_configured(&self) -> bool {
        self.users_file.is_some() || self.token_file.is_some()
    }

    /// The address links point at.
    pub fn link_base(&self) -> String {
        match &self.public_url {
            Some(url) => url.clone(),
            None => format!("http://{}", self.listen),
        }
    }
}

/// One alert sink (`alerts: [ … ]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertSink {
    /// Names the sink in logs and metrics (never the URL). Default `sink-N` (1-based).
    pub name: String,
    /// A file holding the webhook URL (a secret: never logged).
    pub url_file: PathBuf,
    pub format: AlertFormat,
    /// The events sent to this sink. Default: every event.
    pub events: Vec<AlertEvent>,
    /// `stalled` after this long without progress while work is pending.
    pub stalled_after: Duration,
    /// A message that cannot be delivered is retried with backoff this long, then dropped.
    pub retry_for: Duration,
}

/// The body a sink receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertFormat {
    /// A Slack incoming-webhook message (`text` plus `blocks`).
    Slack,
    /// One JSON object per message (see docs/alerts.md).
    Json,
}

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlertEvent {
    ManifestFinished,
    ManifestRejected,
    JobsFailed,
    Paused,
    Resumed,
    Stalled,
    InDoubt,
}

impl AlertEvent {
    pub const ALL: [AlertEvent; 7] = [
        AlertEvent::ManifestFinished,
        AlertEvent::ManifestRejected,
        AlertEvent::JobsFailed,
        AlertEvent::Paused,
        AlertEvent::Resumed,
        AlertEvent::Stalled,
        AlertEvent::InDoubt,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertEvent::ManifestFinished => "manifest-finished",
            AlertEvent::ManifestRejected => "manifest-rejected",
            AlertEvent::JobsFailed => "jobs-failed",
            AlertEvent::Paused => "paused",
            AlertEvent::Resumed => "resumed",
            AlertEvent::Stalled => "stalled",
            AlertEvent::InDoubt => "in-doubt",
        }
    }

    pub fn parse(name: &str) -> Option<AlertEvent> {
        AlertEvent::ALL.into_iter().find(|e| e.as_str() == name)
    }
}
