//! Checks of the `web` and `alerts` sections: the dashboard refuses a listener other than
//! loopback without authentication, and actions without a named user; every alert sink has a
//! URL file, a known format and known events.

use std::path::Path;

use serde_json::Value;

use crate::config::check::{Checker, lookup};
use crate::config::web::{
    AlertEvent, AlertFormat, AlertSink, DEFAULT_RETRY_FOR, DEFAULT_STALLED_AFTER,
    DEFAULT_WEB_LISTEN, WebConfig,
};
use crate::webhook::WebhookConfig;
use crate::yaml::kind;

/// The longest `webhook.poll_fallback` accepted.
const MAX_POLL_FALLBACK: std::time::Duration = std::time::Duration::from_secs(3600);

/// The keys of one alert sink.
const SINK_KEYS: &[&str] = &[
    "name",
    "url_file",
    "format",
    "events",
    "stalled_after",
    "retry_for",
];

impl Checker {
    /// `webhook`, or `None` when the section is absent or says `enabled: false` (results are
    /// polled). An empty section is a problem: present, it would turn webhooks on, but it
    /// names no secret (silently off, it would hide the mistake).
    pub(super) fn webhook(&mut self, root: &Value, base_dir: &Path) -> Option<WebhookConfig> {
        match lookup(root, "webhook") {
            None => return None,
            Some(Value::Null) => {
                self.problem(
                    "webhook",
                    "is empty: give at least `secret_file` (and `listen`) to receive Claid's webhooks (docs/webhooks.md), or remove the section to poll for results",
                );
                return None;
            }
            Some(_) => {}
        }
        let defaults = WebhookConfig::default();
        let enabled = self.boolean(root, "webhook.enabled", true);
        let listen = self
            .socket_addr(root, "webhook.listen")
            .unwrap_or(defaults.listen);
        let secret_file = self.path(root, "webhook.secret_file", base_dir);
        if enabled && secret_file.is_none() {
            self.problem(
                "webhook.secret_file",
                "required: the file holding the secret set in Claid's dashboard (Integrations → Webhook Settings); every webhook is checked against it, and the receiver does not start without one",
            );
        }
        let mut poll_fallback =
            self.duration(root, "webhook.poll_fallback", defaults.poll_fallback, false);
        if poll_fallback > MAX_POLL_FALLBACK {
            // A task whose webhook was lost is polled at the latest after this long: days
            // would leave its images (and their slots of `max_in_flight`) waiting as long.
            self.problem(
                "webhook.poll_fallback",
                "at most 1h: a task whose webhook is lost is polled at the latest after this long, and its images wait as long; use a few minutes, like `2m`",
            );
            poll_fallback = defaults.poll_fallback;
        }
        if !enabled {
            return None;
        }
        Some(WebhookConfig {
            listen,
            secret_file,
            poll_fallback,
        })
    }

    /// `web`, or `None` when the section is absent or null or says `enabled: false` (the
    /// dashboard is off; its other keys are still checked).
    pub(super) fn web(&mut self, root: &Value, base_dir: &Path) -> Option<WebConfig> {
        if matches!(lookup(root, "web"), None | Some(Value::Null)) {
            return None;
        }
        let enabled = self.boolean(root, "web.enabled", true);
        let listen = self
            .socket_addr(root, "web.listen")
            .unwrap_or(DEFAULT_WEB_LISTEN);
        let users_file = self.path(root, "web.users_file", base_dir);
        let token_file = self.path(root, "web.token_file", base_dir);
        let allow_actions = self.boolean(root, "web.allow_actions", false);
        let public_url = match lookup(root, "web.public_url") {
            None | Some(Value::Null) => None,
            // The URL goes into alerts that leave the machine (chat channels): a password in
            // it would be posted there.
            Some(Value::String(text)) if crate::text::has_user_info(text.trim()) => {
                self.problem(
                    "web.public_url",
                    "holds a user name or password (`https://user:pass@host`); it is printed in alerts that leave this machine: give the URL without them (the dashboard asks its users to log in)".to_owned(),
                );
                None
            }
            Some(Value::String(text)) if is_http_url(text.trim()) => {
                Some(text.trim().trim_end_matches('/').to_owned())
            }
            Some(other) => {
                self.problem(
                    "web.public_url",
                    format!(
                        "expected an http(s) URL like `https://claid.example.com`, found {}",
                        describe(other)
                    ),
                );
                None
            }
        };
        let web = WebConfig {
            listen,
            users_file,
            token_file,
            allow_actions,
            public_url,
        };
        if !enabled {
            return None;
        }
        if !listen.ip().is_loopback() && !web.auth_configured() {
            self.problem(
                "web.listen",
                format!(
                    "`{listen}` is reachable from other machines, so the dashboard needs authentication: set `web.users_file` (add users with `claid-hotfolder web-user add NAME`) or `web.token_file`, or listen on 127.0.0.1"
                ),
            );
        }
        if allow_actions && !web.auth_configured() {
            self.problem(
                "web.allow_actions",
                "actions are taken by a named, authenticated user: set `web.users_file` or `web.token_file`, or set `allow_actions: false`",
            );
        }
        Some(web)
    }

    /// `alerts`: a list of sinks (none when absent).
    pub(super) fn alerts(&mut self, root: &Value, base_dir: &Path) -> Vec<AlertSink> {
        let list = match lookup(root, "alerts") {
            None | Some(Value::Null) => return Vec::new(),
            Some(Value::Array(list)) => list,
            Some(other) => {
                self.problem(
                    "alerts",
                    format!(
                        "expected a list of sinks like `- {{ url_file: /etc/claid-hotfolder/slack-url, format: slack }}`, found {}",
                        kind(other)
                    ),
                );
                return Vec::new();
            }
        };
        let mut sinks = Vec::new();
        for (n, item) in list.iter().enumerate() {
            // `alerts[N]` has no dot, so the key helpers look it up in a one-entry root, and
            // problems name it the way line numbers are mapped (`alerts[0].url_file`).
            let key = format!("alerts[{n}]");
            let mut one = serde_json::Map::new();
            one.insert(key.clone(), item.clone());
            let sink_root = Value::Object(one);
            let Value::Object(map) = item else {
                self.problem(
                    &key,
                    format!(
                        "expected a mapping with `url_file` and `format`, found {}",
                        kind(item)
                    ),
                );
                continue;
            };
            for field in map.keys() {
                if !SINK_KEYS.contains(&field.as_str()) {
                    let near = SINK_KEYS
                        .iter()
                        .find(|k| k.starts_with(field.as_str()) || field.starts_with(*k));
                    if let Some(near) = near {
                        self.problem(
                            &format!("{key}.{field}"),
                            format!("unknown key; did you mean `{near}`?"),
                        );
                        continue;
                    }
                    self.problem(
                        &format!("{key}.{field}"),
                        format!(
                            "unknown key; a sink has {}",
                            SINK_KEYS
                                .iter()
                                .map(|k| format!("`{k}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    );
                }
            }
            let name = match map.get("name") {
                None | Some(Value::Null) => format!("sink-{}", n + 1),
                Some(Value::String(name))
                    if !name.trim().is_empty()
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) =>
                {
                    name.clone()
                }
                Some(other) => {
                    self.problem(
                        &format!("{key}.name"),
                        format!(
                            "expected a short name of letters, digits, `-`, `_` or `.`, found {}",
                            describe(other)
                        ),
                    );
                    format!("sink-{}", n + 1)
                }
            };
            let url_file = self.path(&sink_root, &format!("{key}.url_file"), base_dir);
            if url_file.is_none() && matches!(map.get("url_file"), None | Some(Value::Null)) {
                self.problem(
                    &format!("{key}.url_file"),
                    "missing; give the file that holds the webhook URL (the URL is a secret, so it is not written in the config)",
                );
            }
            let format = match map.get("format") {
                None | Some(Value::Null) => AlertFormat::Json,
                Some(Value::String(text)) if text == "slack" => AlertFormat::Slack,
                Some(Value::String(text)) if text == "json" => AlertFormat::Json,
                Some(other) => {
                    self.problem(
                        &format!("{key}.format"),
                        format!("{} is not one of: slack | json", describe(other)),
                    );
                    AlertFormat::Json
                }
            };
            let events = self.alert_events(map.get("events"), &format!("{key}.events"));
            let stalled_after = self.duration(
                &sink_root,
                &format!("{key}.stalled_after"),
                DEFAULT_STALLED_AFTER,
                false,
            );
            let retry_for = self.duration(
                &sink_root,
                &format!("{key}.retry_for"),
                DEFAULT_RETRY_FOR,
                false,
            );
            if let Some(url_file) = url_file {
                sinks.push(AlertSink {
                    name,
                    url_file,
                    format,
                    events,
                    stalled_after,
                    retry_for,
                });
            }
        }
        let mut names: Vec<&str> = sinks.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|w| w[0] == w[1]) {
            let duplicate = pair[0].to_owned();
            self.problem(
                "alerts",
                format!("two sinks are named `{duplicate}`; give each its own `name`"),
            );
        }
        sinks
    }

    fn alert_events(&mut self, value: Option<&Value>, key: &str) -> Vec<AlertEvent> {
        let known = || {
            AlertEvent::ALL
                .iter()
                .map(|e| e.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match value {
            None | Some(Value::Null) => AlertEvent::ALL.to_vec(),
            Some(Value::Array(items)) => {
                let mut events = Vec::new();
                for (n, item) in items.iter().enumerate() {
                    match item.as_str().and_then(AlertEvent::parse) {
                        Some(event) if !events.contains(&event) => events.push(event),
                        Some(_) => {}
                        None => self.problem(
                            &format!("{key}[{n}]"),
                            format!(
                                "{} is not an event; use one of: {}",
                                describe(item),
                                known()
                            ),
                        ),
                    }
                }
                if items.is_empty() {
                    self.problem(
                        key,
                        format!("the list is empty; name at least one of: {}", known()),
                    );
                }
                events
            }
            Some(other) => {
                self.problem(
                    key,
                    format!(
                        "expected a list of events, found {}; use some of: {}",
                        kind(other),
                        known()
                    ),
                );
                AlertEvent::ALL.to_vec()
            }
        }
    }
}

fn is_http_url(text: &str) -> bool {
    (text.starts_with("http://") || text.starts_with("https://")) && text.len() > "https://".len()
}

fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("`{s}`"),
        other => kind(other).to_owned(),
    }
}
