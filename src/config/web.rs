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

/// `web`: the dashboard. Off when the section is absent, null, or says `enabled: false`.
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

/// `web` as `run --print-config` shows it: the keys with their values, `enabled: false` (and
/// the defaults) when the dashboard is off.
pub fn web_yaml(web: Option<&WebConfig>) -> serde_yaml::Value {
    let path = |p: &Option<PathBuf>| match p {
        Some(p) => serde_yaml::Value::String(p.display().to_string()),
        None => serde_yaml::Value::Null,
    };
    let mut map = serde_yaml::Mapping::new();
    let off = WebConfig {
        listen: DEFAULT_WEB_LISTEN,
        users_file: None,
        token_file: None,
        allow_actions: false,
        public_url: None,
    };
    let shown = web.unwrap_or(&off);
    map.insert("enabled".into(), web.is_some().into());
    map.insert("listen".into(), shown.listen.to_string().into());
    map.insert("users_file".into(), path(&shown.users_file));
    map.insert("token_file".into(), path(&shown.token_file));
    map.insert("allow_actions".into(), shown.allow_actions.into());
    map.insert(
        "public_url".into(),
        shown
            .public_url
            .clone()
            .map_or(serde_yaml::Value::Null, serde_yaml::Value::String),
    );
    serde_yaml::Value::Mapping(map)
}

/// `alerts` as `run --print-config` shows it: every sink with every key.
pub fn alerts_yaml(sinks: &[AlertSink]) -> serde_yaml::Value {
    let duration = |d: Duration| humantime::format_duration(d).to_string().into();
    serde_yaml::Value::Sequence(
        sinks
            .iter()
            .map(|sink| {
                let mut map = serde_yaml::Mapping::new();
                map.insert("name".into(), sink.name.clone().into());
                map.insert(
                    "url_file".into(),
                    sink.url_file.display().to_string().into(),
                );
                map.insert(
                    "format".into(),
                    match sink.format {
                        AlertFormat::Slack => "slack",
                        AlertFormat::Json => "json",
                    }
                    .into(),
                );
                map.insert(
                    "events".into(),
                    serde_yaml::Value::Sequence(
                        sink.events.iter().map(|e| e.as_str().into()).collect(),
                    ),
                );
                map.insert("stalled_after".into(), duration(sink.stalled_after));
                map.insert("retry_for".into(), duration(sink.retry_for));
                serde_yaml::Value::Mapping(map)
            })
            .collect(),
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_sections_read_back_the_same() {
        let web = WebConfig {
            listen: "0.0.0.0:9000".parse().expect("addr"),
            users_file: Some(PathBuf::from("/etc/claid-hotfolder/users")),
            token_file: None,
            allow_actions: true,
            public_url: Some("https://claid.example.com".into()),
        };
        let sinks = vec![AlertSink {
            name: "team".into(),
            url_file: PathBuf::from("/etc/claid-hotfolder/slack-url"),
            format: AlertFormat::Slack,
            events: vec![AlertEvent::ManifestFinished, AlertEvent::Stalled],
            stalled_after: Duration::from_secs(600),
            retry_for: DEFAULT_RETRY_FOR,
        }];
        let mut root = serde_yaml::Mapping::new();
        root.insert("web".into(), web_yaml(Some(&web)));
        root.insert("alerts".into(), alerts_yaml(&sinks));
        let text = format!(
            "folders: {{ inbox: /i, outbox: /o, archive: /a, rejected: /r, state: /s }}\n{}",
            serde_yaml::to_string(&serde_yaml::Value::Mapping(root)).expect("yaml")
        );
        let config = crate::config::parse(&text, std::path::Path::new("/etc/c.yaml"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(config.web, Some(web));
        assert_eq!(config.alerts, sinks);
        let off = format!(
            "folders: {{ inbox: /i, outbox: /o, archive: /a, rejected: /r, state: /s }}\nweb: {}",
            serde_yaml::to_string(&web_yaml(None))
                .expect("yaml")
                .replace('\n', ", ")
                .trim_end_matches(", ")
        );
        let off = off.replacen("web: ", "web: { ", 1) + " }";
        let config = crate::config::parse(&off, std::path::Path::new("/etc/c.yaml"))
            .unwrap_or_else(|e| panic!("{e}\n{off}"));
        assert_eq!(config.web, None, "{off}");
    }
}
