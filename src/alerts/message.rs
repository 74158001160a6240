//! What an alert says, and its two bodies: a JSON object with the event's fields, or a Slack
//! incoming-webhook message (`text` for notifications, `blocks` for the message, and a button
//! to the dashboard when `web` is on). Names from manifests are escaped for Slack's mrkdwn
//! (`&`, `<`, `>`), so a file name cannot mention a channel or forge a link.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::codes::FailureCode;
use crate::config::web::AlertEvent;
use crate::pipeline::health::Refusal;
use crate::store::{ManifestCounts, ManifestId};

/// Problems of a rejected manifest shown in a message, at most.
pub const MAX_PROBLEM_LINES: usize = 8;
/// Manifests named in a `stalled` message, at most.
pub const MAX_STALLED_MANIFESTS: usize = 5;

/// Why outputs or submits stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// The API refused the daemon in a way no retry mends (see [`Refusal`]).
    Api(Refusal),
    /// The outbox's disk is full.
    DiskFull,
    /// The outbox cannot be written.
    OutboxUnwritable,
}

impl Cause {
    pub fn code(&self) -> String {
        match self {
            Cause::Api(refusal) => refusal.code(),
            Cause::DiskFull => "disk-full".to_owned(),
            Cause::OutboxUnwritable => "outbox-unwritable".to_owned(),
        }
    }

    fn what(&self) -> &'static str {
        match self {
            Cause::Api(refusal) => refusal.what(),
            Cause::DiskFull => "the outbox's disk is full",
            Cause::OutboxUnwritable => "the outbox cannot be written",
        }
    }
}

/// One message, before it is formatted for a sink.
#[derive(Debug, Clone, PartialEq)]
pub enum Alert {
    ManifestFinished {
        id: ManifestId,
        rel: String,
        counts: ManifestCounts,
        failures: BTreeMap<FailureCode, u64>,
        superseded: bool,
    },
    ManifestRejected {
        rel: String,
        /// The first lines of the error file.
        problems: Vec<String>,
    },
    /// Jobs of one manifest that failed within one window (a minute), or before it finished.
    JobsFailed {
        id: ManifestId,
        rel: String,
        failures: BTreeMap<FailureCode, u64>,
    },
    Paused {
        cause: Cause,
        reason: String,
    },
    Resumed {
        cause: Cause,
    },
    Stalled {
        idle_secs: u64,
        queued: u64,
        in_flight: u64,
        manifests: Vec<String>,
    },
    InDoubt {
        id: ManifestId,
        rel: String,
        held: u64,
    },
}

impl Alert {
    pub fn event(&self) -> AlertEvent {
        match self {
            Alert::ManifestFinished { .. } => AlertEvent::ManifestFinished,
            Alert::ManifestRejected { .. } => AlertEvent::ManifestRejected,
            Alert::JobsFailed { .. } => AlertEvent::JobsFailed,
            Alert::Paused { .. } => AlertEvent::Paused,
            Alert::Resumed { .. } => AlertEvent::Resumed,
            Alert::Stalled { .. } => AlertEvent::Stalled,
            Alert::InDoubt { .. } => AlertEvent::InDoubt,
        }
    }

    /// The dashboard page about this alert, relative to the dashboard's root.
    fn page(&self) -> String {
        match self {
            Alert::ManifestFinished { id, .. }
            | Alert::JobsFailed { id, .. }
            | Alert::InDoubt { id, .. } => format!("/manifests/{id}"),
            Alert::ManifestRejected { .. } => "/rejected".to_owned(),
            Alert::Paused { .. } | Alert::Resumed { .. } | Alert::Stalled { .. } => "/".to_owned(),
        }
    }

    /// One line in plain words (Slack's notification text, the JSON's `text`).
    pub fn summary(&self) -> String {
        match self {
            Alert::ManifestFinished {
                rel,
                counts,
                failures,
                superseded,
                ..
            } => {
                let how = if *superseded {
                    "ended (superseded by a newer version)"
                } else {
                    "finished"
                };
                let total = counts.total();
                // `failures` leaves out the jobs a newer version took over (superseded).
                let failed: u64 = failures.values().sum();
                let mut text = format!(
                    "{rel} {how}: {total} image{}, {} done ({} unchanged), {failed} failed",
                    if total == 1 { "" } else { "s" },
                    counts.done,
                    counts.unchanged,
                );
                let left = counts.superseded;
                if left > 0 {
                    text.push_str(&format!(", {left} left to the newer version"));
                }
                if counts.in_doubt > 0 {
                    text.push_str(&format!(", {} held in doubt", counts.in_doubt));
                }
                if !failures.is_empty() {
                    text.push_str(&format!(" ({})", codes_text(failures)));
                }
                text
            }
            Alert::ManifestRejected { rel, problems } => {
                let first = problems.iter().find(|l| !l.trim().is_empty());
                match first {
                    Some(line) => format!("{rel} was rejected, nothing was submitted: {line}"),
                    None => format!("{rel} was rejected, nothing was submitted"),
                }
            }
            Alert::JobsFailed { rel, failures, .. } => {
                let n: u64 = failures.values().sum();
                format!(
                    "{n} image{} of {rel} failed ({})",
                    if n == 1 { "" } else { "s" },
                    codes_text(failures)
                )
            }
            Alert::Paused { cause, reason } => {
                format!("Paused: {}; queued images wait. {reason}", cause.what())
            }
            Alert::Resumed { cause } => match cause {
                Cause::Api(_) => "Resumed: the API accepts requests again".to_owned(),
                Cause::DiskFull | Cause::OutboxUnwritable => {
                    "Resumed: the outbox can be written again".to_owned()
                }
            },
            Alert::Stalled {
                idle_secs,
                queued,
                in_flight,
                ..
            } => format!(
                "Stalled: no image has moved for {}; {queued} queued, {in_flight} at Claid",
                humantime::format_duration(std::time::Duration::from_secs(*idle_secs))
            ),
            Alert::InDoubt { rel, held, .. } => format!(
                "{held} image{} of {rel} held in doubt: the submit may have reached Claid; release them from the dashboard or with `replay --in-doubt` (Claid may bill twice)",
                if *held == 1 { "" } else { "s" }
            ),
        }
    }

    /// The `json` format: the event, its time, the summary, the event's fields, and the
    /// dashboard link when `web` is on.
    pub fn json(&self, at: &str, dashboard: Option<&str>) -> Value {
        let mut body = json!({
            "event": self.event().as_str(),
            "at": at,
            "text": self.summary(),
        });
        let fields = match self {
            Alert::ManifestFinished {
                id,
                rel,
                counts,
                failures,
                superseded,
            } => json!({
                "manifest": rel,
                "manifest_id": id,
                "superseded": superseded,
                "counts": counts_json(counts),
                "failures": failures_json(failures),
            }),
            Alert::ManifestRejected { rel, problems } => json!({
                "manifest": rel,
                "problems": problems,
            }),
            Alert::JobsFailed { id, rel, failures } => json!({
                "manifest": rel,
                "manifest_id": id,
                "failed": failures.values().sum::<u64>(),
                "failures": failures_json(failures),
            }),
            Alert::Paused { cause, reason } => json!({
                "cause": cause.code(),
                "reason": reason,
            }),
            Alert::Resumed { cause } => json!({ "cause": cause.code() }),
            Alert::Stalled {
                idle_secs,
                queued,
                in_flight,
                manifests,
            } => json!({
                "idle_seconds": idle_secs,
                "queued": queued,
                "in_flight": in_flight,
                "manifests": manifests,
            }),
            Alert::InDoubt { id, rel, held } => json!({
                "manifest": rel,
                "manifest_id": id,
                "held": held,
            }),
        };
        if let (Value::Object(body), Value::Object(fields)) = (&mut body, fields) {
            body.extend(fields);
            if let Some(base) = dashboard {
                body.insert(
                    "dashboard".to_owned(),
                    Value::String(format!("{base}{}", self.page())),
                );
            }
        }
        body
    }

    /// The `slack` format: `text` (the notification), a section with the summary in mrkdwn,
    /// the details (failure codes, problems), and a button to the dashboard when `web` is on.
    pub fn slack(&self, dashboard: Option<&str>) -> Value {
        let mut blocks = vec![json!({
            "type": "section",
            "text": { "type": "mrkdwn", "text": format!("{} {}", self.icon(), slack_escape(&self.summary())) },
        })];
        let details = self.details();
        if !details.is_empty() {
            blocks.push(json!({
                "type": "section",
                "text": { "type": "mrkdwn", "text": slack_escape(&details) },
            }));
        }
        if let Some(base) = dashboard {
            blocks.push(json!({
                "type": "actions",
                "elements": [{
                    "type": "button",
                    "text": { "type": "plain_text", "text": "Open the dashboard" },
                    "url": format!("{base}{}", self.page()),
                }],
            }));
        }
        json!({ "text": slack_escape(&self.summary()), "blocks": blocks })
    }

    fn icon(&self) -> &'static str {
        match self {
            Alert::ManifestFinished { failures, .. } if failures.is_empty() => ":white_check_mark:",
            Alert::ManifestFinished { .. } | Alert::JobsFailed { .. } => ":warning:",
            Alert::ManifestRejected { .. } => ":no_entry:",
            Alert::Paused { .. } | Alert::Stalled { .. } => ":double_vertical_bar:",
            Alert::Resumed { .. } => ":arrow_forward:",
            Alert::InDoubt { .. } => ":grey_question:",
        }
    }

    /// Lines below the summary.
    fn details(&self) -> String {
        match self {
            Alert::ManifestFinished { failures, .. } | Alert::JobsFailed { failures, .. } => {
                failures
                    .iter()
                    .map(|(code, n)| format!("{code}: {n}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
            Alert::ManifestRejected { problems, .. } => problems.join("\n"),
            Alert::Stalled { manifests, .. } => manifests.join("\n"),
            Alert::Paused { .. } | Alert::Resumed { .. } | Alert::InDoubt { .. } => String::new(),
        }
    }
}

fn codes_text(failures: &BTreeMap<FailureCode, u64>) -> String {
    failures
        .iter()
        .map(|(code, n)| format!("{code} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn counts_json(c: &ManifestCounts) -> Value {
    json!({
        "total": c.total(),
        "done": c.done,
        "unchanged": c.unchanged,
        "failed": c.failed,
        "superseded": c.superseded,
        "in_doubt": c.in_doubt,
    })
}

fn failures_json(failures: &BTreeMap<FailureCode, u64>) -> Value {
    Value::Object(
        failures
            .iter()
            .map(|(code, n)| (code.as_str().to_owned(), json!(n)))
            .collect(),
    )
}

/// Escapes the three characters Slack's mrkdwn gives a meaning to (`<@U…>`, `<!channel>`,
/// `<url|text>`), as Slack documents.
pub fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished() -> Alert {
        let mut failures = BTreeMap::new();
        failures.insert(FailureCode::ClaidError, 2);
        Alert::ManifestFinished {
            id: 7,
            rel: "spring/<!channel> shoes.yaml".to_owned(),
            counts: ManifestCounts {
                done: 3,
                failed: 2,
                ..ManifestCounts::default()
            },
            failures,
            superseded: false,
        }
    }

    #[test]
    fn a_superseded_run_counts_what_the_newer_version_took_over_apart_from_failures() {
        let mut failures = BTreeMap::new();
        failures.insert(FailureCode::ClaidError, 1);
        let alert = Alert::ManifestFinished {
            id: 8,
            rel: "m.yaml".to_owned(),
            counts: ManifestCounts {
                done: 2,
                // 1 real failure, 3 taken over by the newer version.
                failed: 1,
                superseded: 3,
                ..ManifestCounts::default()
            },
            failures,
            superseded: true,
        };
        let text = alert.summary();
        assert!(
            text.contains("6 images, 2 done (0 unchanged), 1 failed, 3 left to the newer version"),
            "{text}"
        );
    }

    #[test]
    fn json_carries_the_totals_the_codes_and_the_link() {
        let body = finished().json("2026-01-01T00:00:00Z", Some("https://claid.example.com"));
        assert_eq!(body["event"], "manifest-finished");
        assert_eq!(body["counts"]["total"], 5);
        assert_eq!(body["counts"]["failed"], 2);
        assert_eq!(body["failures"]["claid-error"], 2);
        assert_eq!(body["dashboard"], "https://claid.example.com/manifests/7");
        let without = finished().json("t", None);
        assert!(without.get("dashboard").is_none());
    }

    #[test]
    fn slack_escapes_names_and_links_the_dashboard_only_when_on() {
        let body = finished().slack(Some("https://claid.example.com"));
        let text = body["blocks"][0]["text"]["text"].as_str().expect("text");
        assert!(text.contains("&lt;!channel&gt;"), "{text}");
        assert!(!text.contains("<!channel>"), "{text}");
        let button = &body["blocks"][2]["elements"][0];
        assert_eq!(button["url"], "https://claid.example.com/manifests/7");
        let off = finished().slack(None);
        let blocks = off["blocks"].as_array().expect("blocks");
        assert!(blocks.iter().all(|b| b["type"] != "actions"), "{off}");
    }
}
