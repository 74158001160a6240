//! The dashboard's HTML, as maud templates: checked at compile time, and every value written
//! into them (manifest and file names, Claid's messages, error texts) is escaped, in text and
//! in attributes alike. No script or style is inline (the Content-Security-Policy forbids it):
//! `/static/style.css` styles the pages and `/static/live.js` refreshes the overview.

use std::time::Duration;

use maud::{DOCTYPE, Markup, html};

use crate::activity::Snapshot;
use crate::admin::ManifestView;
use crate::text::count;
use crate::web::files::encode_path;

/// What every page's frame needs.
pub struct Frame<'a> {
    pub title: &'a str,
    /// The logged-in user, when the dashboard has users.
    pub user: Option<&'a str>,
    /// The CSRF token of the caller's forms (logout, actions).
    pub csrf: Option<&'a str>,
    /// Which nav entry is current.
    pub nav: Nav,
    /// A notice shown above the content (after an action).
    pub flash: Option<&'a str>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Failures,
    Rejected,
    None,
}

/// The service's state as the overview's banner shows it.
pub struct ServiceState {
    /// `running`, `paused`, `disk-full`, `outbox-unwritable`, `waiting` (the API or a bucket
    /// has not answered for a while).
    pub code: &'static str,
    pub title: String,
    pub detail: Option<String>,
}

/// The overview's live part.
pub struct Overview<'a> {
    pub state: &'a ServiceState,
    pub activity: &'a Snapshot,
    /// The client's rate limit in requests per minute (the tighter of its two quotas).
    pub rate_limit_per_minute: u64,
    pub in_flight: usize,
    pub queued: usize,
    /// Jobs held in doubt now.
    pub held_in_doubt: u64,
    /// Submits that may have reached Claid twice, ever.
    pub in_doubt_events: u64,
    pub active: &'a [(ManifestView, &'static str)],
    pub recent: &'a [ManifestView],
    /// Finished runs older than those in `recent` exist.
    pub older_not_listed: bool,
    pub uptime: Duration,
}

/// One job row of a manifest page.
pub struct JobRow {
    pub idx: u32,
    pub id: u64,
    pub input: String,
    /// The input is an http(s) URL (shown as a link).
    pub input_is_url: bool,
    pub output: String,
    pub state: &'static str,
    pub code: Option<String>,
    pub message: Option<String>,
    /// Whether the output exists (a thumbnail is offered).
    pub has_output: bool,
    /// The object a storage output was written to (`s3://bucket/key`), shown instead of a
    /// thumbnail.
    pub object: Option<String>,
    pub task_id: Option<u64>,
    pub batch_id: Option<u64>,
    /// How many images went in that batch.
    pub batch_images: Option<u32>,
    pub requests: u64,
    pub in_doubt: u32,
}

/// A manifest page.
pub struct ManifestPage<'a> {
    pub id: u64,
    pub rel: &'a str,
    pub phase: &'a str,
    pub registered: &'a str,
    pub sha256: &'a str,
    pub counts: &'a crate::store::ManifestCounts,
    pub state_filter: Option<&'a str>,
    pub rows: &'a [JobRow],
    pub page: usize,
    pub pages: usize,
    pub report_json: Option<String>,
    pub report_csv: Option<String>,
    /// Actions are offered (allowed, and the caller is authenticated).
    pub actions: bool,
}

/// A rejected file.
pub struct RejectedRow {
    pub rel: String,
    pub when: String,
    pub error: String,
    /// The error text was cut.
    pub cut: bool,
}

/// One failed job on the failures page.
pub struct FailureRow {
    pub manifest_id: u64,
    pub manifest: String,
    pub input: String,
    pub output: String,
    pub message: String,
    pub when: String,
}

/// The frame around every page.
pub fn page(frame: &Frame<'_>, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (frame.title) " · claid-hotfolder" }
                link rel="stylesheet" href="/static/style.css";
                script src="/static/live.js" defer {}
            }
            body {
                header {
                    a.brand href="/" { "claid-hotfolder" }
                    nav {
                        a.current[frame.nav == Nav::Overview] href="/" { "Overview" }
                        a.current[frame.nav == Nav::Failures] href="/failures" { "Failures" }
                        a.current[frame.nav == Nav::Rejected] href="/rejected" { "Rejected" }
                    }
                    @if let Some(user) = frame.user {
                        form.logout method="post" action="/logout" {
                            span.user { (user) }
                            @if let Some(csrf) = frame.csrf {
                                input type="hidden" name="csrf" value=(csrf);
                            }
                            button #logout type="submit" { "Log out" }
                        }
                    }
                }
                main {
                    @if let Some(flash) = frame.flash {
                        p.flash role="status" { (flash) }
                    }
                    (content)
                }
            }
        }
    }
}

/// The overview: the live part is refreshed in place by `/static/live.js`.
pub fn overview(live: Markup) -> Markup {
    html! {
        h1 { "Overview" }
        div #live data-src="/partial/overview" { (live) }
        noscript { p.muted { "Reload the page to see new figures." } }
    }
}

/// The part of the overview that `/partial/overview` serves on its own.
pub fn overview_live(o: &Overview<'_>) -> Markup {
    let a = o.activity;
    html! {
        section.state.(o.state.code) #service-state {
            strong { (o.state.title) }
            @if let Some(detail) = &o.state.detail { " " span { (detail) } }
        }
        section.figures {
            (figure("Throughput now", &format!("{:.1}", a.per_minute_now), "images/min, last 60 s", "rate-now"))
            (figure("Last hour", &format!("{:.1}", a.per_minute_hour), "images/min", "rate-hour"))
            (figure("Rate limit", &format!("{} / {}", a.requests_last_minute, o.rate_limit_per_minute), "API requests in the last minute", "rate-limit"))
            (figure("In flight", &o.in_flight.to_string(), "at Claid", "in-flight"))
            (figure("Queued", &o.queued.to_string(), "waiting to be submitted", "queued"))
            (figure("Done today", &a.done_today.to_string(), "since 00:00 UTC", "done-today"))
            (figure("Failed today", &a.failed_today.to_string(), "since 00:00 UTC", "failed-today"))
            (figure("In doubt", &o.held_in_doubt.to_string(), &format!("held; {} possible double submits ever", o.in_doubt_events), "in-doubt"))
        }
        section {
            h2 { "Images per minute" }
            (chart(&a.chart))
        }
        section {
            h2 { "Active manifests" }
            @if o.active.is_empty() {
                p.muted #no-active { "Nothing is running." }
            } @else {
                table #active {
                    thead { tr { th { "Manifest" } th { "Phase" } th { "Progress" } th.num { "Done" } th.num { "Failed" } th.num { "In flight" } th.num { "Queued" } th.num { "Images/min" } th { "ETA" } } }
                    tbody {
                        @for (m, phase) in o.active {
                            tr data-manifest=(m.id) {
                                td { a href=(format!("/manifests/{}", m.id)) { (m.manifest) } }
                                td { (phase) }
                                td { progress id=(format!("progress-{}", m.id)) value=(m.done + m.failed + m.superseded) max=(m.total.max(1)) { (m.done + m.failed + m.superseded) " of " (m.total) } }
                                td.num { (m.done) }
                                td.num { (m.failed) }
                                td.num { (m.in_flight) }
                                td.num { (m.queued) }
                                td.num { (m.images_per_minute.map(|r| format!("{r:.1}")).unwrap_or_default()) }
                                td { (m.eta_secs.map(|s| eta(Duration::from_secs(s))).unwrap_or_else(|| "–".to_owned())) }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Recently finished" }
            @if o.recent.is_empty() {
                p.muted { "None yet." }
            } @else {
                table #recent {
                    thead { tr { th { "Manifest" } th { "Taken in (UTC)" } th.num { "Images" } th.num { "Done" } th.num { "Failed" } th.num { "In doubt" } } }
                    tbody {
                        @for m in o.recent {
                            tr.failed[m.failed > 0] {
                                td { a href=(format!("/manifests/{}", m.id)) { (m.manifest) } }
                                // Two runs of one file are told apart by when each was taken in.
                                td.when { (m.registered_at_ms.map_or("-".to_owned(), crate::store::utc_seconds)) }
                                td.num { (m.total) }
                                td.num { (m.done) }
                                td.num { (m.failed) }
                                td.num { (m.in_doubt) }
                            }
                        }
                    }
                }
                @if o.older_not_listed {
                    p.muted #older-runs {
                        "Older finished runs are not listed here: their reports are in the outbox (or beside the archived manifest, where the outbox refused one), and "
                        code { "claid-hotfolder jobs --manifest PATH" }
                        " lists a file's jobs."
                    }
                }
            }
        }
        p.muted.footnote {
            "Figures of throughput, today and the chart are kept in memory since the daemon started "
            (ago(o.uptime)) " ago; a restart begins them afresh. Counts of jobs come from the store."
        }
    }
}

fn figure(label: &str, value: &str, unit: &str, id: &str) -> Markup {
    html! {
        div.figure id=(id) {
            span.label { (label) }
            span.value { (value) }
            span.unit { (unit) }
        }
    }
}

/// An SVG line of images per minute (no script: the points are computed here).
pub fn chart(points: &[(u64, u64)]) -> Markup {
    const W: f64 = 720.0;
    const H: f64 = 120.0;
    let max = points.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1);
    let span = Duration::from_secs(points.len() as u64 * 60);
    let step = if points.len() > 1 {
        W / (points.len() - 1) as f64
    } else {
        W
    };
    let line = points
        .iter()
        .enumerate()
        .map(|(i, (_, n))| {
            format!(
                "{:.1},{:.1}",
                i as f64 * step,
                H - 10.0 - (*n as f64 / max as f64) * (H - 20.0)
            )
        })
        .collect::<Vec<_>>()
        .join(" ");
    html! {
        svg.chart #chart viewBox=(format!("0 0 {W} {H}")) preserveAspectRatio="none" role="img" aria-label=(format!("Images per minute over the last {}", eta(span))) {
            line x1="0" y1=(H - 10.0) x2=(W) y2=(H - 10.0) class="axis" {}
            polyline points=(line) class="series" {}
            text x="2" y="12" class="tick" { (max) "/min" }
        }
        div.chart-axis { span { (eta(span)) " ago" } span { "now" } }
    }
}

/// The login form.
pub fn login(next: &str, failed: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Log in · claid-hotfolder" }
                link rel="stylesheet" href="/static/style.css";
            }
            body.login {
                main {
                    h1 { "claid-hotfolder" }
                    @if let Some(why) = failed { p.flash.error role="alert" { (why) } }
                    form method="post" action="/login" {
                        input type="hidden" name="next" value=(next);
                        label { "User" input #username type="text" name="username" autocomplete="username" required autofocus; }
                        label { "Password" input #password type="password" name="password" autocomplete="current-password" required; }
                        button #login type="submit" { "Log in" }
                    }
                }
            }
        }
    }
}

/// A manifest run with its jobs.
pub fn manifest(m: &ManifestPage<'_>, csrf: Option<&str>) -> Markup {
    let states = crate::codes::StateName::ALL;
    html! {
        h1.manifest-name { (m.rel) }
        p.meta {
            "Run " (m.id) " · " span #phase { (m.phase) } " · registered " (m.registered)
            " · sha256 " code { (&m.sha256[..m.sha256.len().min(12)]) }
        }
        p.reports {
            @if let Some(json) = &m.report_json { a #report-json href=(json) { "Report (JSON)" } " " }
            @if let Some(csv) = &m.report_csv { a #report-csv href=(csv) download { "Report (CSV)" } }
            @if m.report_json.is_none() && m.report_csv.is_none() { span.muted { "The report is written when the run ends." } }
        }
        @if m.actions {
            div.actions {
                @if m.counts.failed > 0 {
                    form method="post" action=(format!("/manifests/{}/retry-failed", m.id)) {
                        @if let Some(csrf) = csrf { input type="hidden" name="csrf" value=(csrf); }
                        button #retry-failed type="submit" { "Retry the " (count(m.counts.failed.try_into().unwrap_or(usize::MAX), "failed job")) }
                    }
                }
                @if m.counts.in_doubt > 0 {
                    form method="post" action=(format!("/manifests/{}/release-in-doubt", m.id)) {
                        @if let Some(csrf) = csrf { input type="hidden" name="csrf" value=(csrf); }
                        p.warning { "Jobs held in doubt may already have reached Claid: submitting them again may bill them twice." }
                        label { input type="checkbox" name="confirm" value="yes" required; " I understand Claid may bill these images twice" }
                        button #release-in-doubt type="submit" { "Release the " (count(m.counts.in_doubt.try_into().unwrap_or(usize::MAX), "job")) " held in doubt" }
                    }
                }
            }
        }
        nav.filters {
            a.current[m.state_filter.is_none()] href=(format!("/manifests/{}", m.id)) { "All (" (m.counts.total()) ")" }
            @for state in states {
                @let n = m.counts.of(state);
                @if n > 0 {
                    a.current[m.state_filter == Some(state.as_str())] href=(format!("/manifests/{}?state={}", m.id, state.as_str())) { (state.as_str()) " (" (n) ")" }
                }
            }
        }
        table #jobs {
            thead { tr { th.num { "#" } th { "Output" } th { "Input" } th { "State" } th { "Failure" } th { "Task / batch" } th.num { "API requests" } } }
            tbody {
                @for row in m.rows {
                    tr.(row.state) data-job=(row.id) {
                        td.num { (row.idx + 1) }
                        td.output {
                            @if row.has_output {
                                a href=(format!("/file/{}", encode_path(&row.output))) {
                                    img.thumb src=(format!("/thumb/{}", encode_path(&row.output))) alt=(row.output) width="80" height="80";
                                }
                            }
                            span.path { (row.output) }
                            @if let Some(object) = &row.object { br; span.path { (object) } }
                        }
                        td.input {
                            @if row.input_is_url { a href=(row.input) rel="noreferrer noopener" { (row.input) } } @else { (row.input) }
                        }
                        td.state { (row.state) @if row.in_doubt > 0 { " (in doubt ×" (row.in_doubt) ")" } }
                        td.failure {
                            @if let Some(code) = &row.code { code { (code) } }
                            @if let Some(message) = &row.message { " " span.message { (message) } }
                        }
                        td {
                            @if let Some(task) = row.task_id { "task " (task) }
                            @if let Some(batch) = row.batch_id {
                                " batch " (batch)
                                @if let Some(images) = row.batch_images { " (" (images) " images)" }
                            }
                        }
                        td.num { (row.requests) }
                    }
                }
            }
        }
        @if m.pages > 1 {
            nav.pages {
                @for p in 1..=m.pages {
                    @let href = match m.state_filter {
                        Some(s) => format!("/manifests/{}?state={s}&page={p}", m.id),
                        None => format!("/manifests/{}?page={p}", m.id),
                    };
                    a.current[p == m.page] href=(href) { (p) }
                }
            }
        }
    }
}

/// The rejected files.
pub fn rejected(rows: &[RejectedRow], csrf: Option<&str>, actions: bool) -> Markup {
    html! {
        h1 { "Rejected" }
        p.muted { "Files refused before anything was spent, newest first, with the problems found. Fix a file where it lies in the rejected folder, then re-run it, or drop a fixed copy into the inbox." }
        @if rows.is_empty() { p.muted #no-rejected { "No rejected file." } }
        @for row in rows {
            article.rejected {
                h2.file { (row.rel) }
                p.muted { (row.when) }
                pre.error { (row.error) @if row.cut { "\n…" } }
                @if actions {
                    form method="post" action="/rejected/rerun" {
                        @if let Some(csrf) = csrf { input type="hidden" name="csrf" value=(csrf); }
                        input type="hidden" name="file" value=(row.rel);
                        button.rerun type="submit" { "Re-run (move back into the inbox)" }
                    }
                }
            }
        }
    }
}

/// The last failed jobs, grouped by code.
pub fn failures(
    groups: &[(String, Vec<FailureRow>)],
    codes: &[(String, usize)],
    code_filter: Option<&str>,
    limit: usize,
) -> Markup {
    html! {
        h1 { "Failures" }
        p.muted { "The last " (limit) " failed jobs of the runs still going and the 50 newest, grouped by failure code." }
        form.filter method="get" action="/failures" {
            label { "Code "
                select #code name="code" {
                    option value="" selected[code_filter.is_none()] { "all codes" }
                    @for (code, n) in codes {
                        option value=(code) selected[code_filter == Some(code.as_str())] { (code) " (" (n) ")" }
                    }
                }
            }
            button #filter type="submit" { "Show" }
        }
        @if groups.is_empty() { p.muted #no-failures { "No failed job." } }
        @for (code, rows) in groups {
            section.failure-group data-code=(code) {
                h2 { code { (code) } " · " (rows.len()) }
                table {
                    thead { tr { th { "Manifest" } th { "Input" } th { "Output" } th { "Claid's message" } th { "When" } } }
                    tbody {
                        @for row in rows {
                            tr {
                                td { a href=(format!("/manifests/{}?state=failed", row.manifest_id)) { (row.manifest) } }
                                td { (row.input) }
                                td { (row.output) }
                                td.message { (row.message) }
                                td { (row.when) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A page that says what went wrong (404, 400, 403).
pub fn problem(message: &str) -> Markup {
    html! {
        h1 { "Cannot show this" }
        p.problem { (message) }
        p { a href="/" { "Back to the overview" } }
    }
}

/// `3 h 12 min`, `4 min`, `25 s`.
pub fn eta(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{} h {} min", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}

fn ago(d: Duration) -> String {
    eta(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_in_text_and_attributes() {
        let rows = vec![RejectedRow {
            rel: "<img src=x onerror=alert(1)>.yaml".into(),
            when: "now".into(),
            error: "\"><script>alert(2)</script>".into(),
            cut: false,
        }];
        let html = rejected(&rows, Some("t\"oken"), true).into_string();
        assert!(!html.contains("<img src=x"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
        assert!(
            html.contains("&lt;img src=x onerror=alert(1)&gt;.yaml"),
            "{html}"
        );
        assert!(html.contains("value=\"t&quot;oken\""), "{html}");
    }

    #[test]
    fn the_chart_scales_to_its_maximum() {
        let html = chart(&[(0, 0), (60_000, 5), (120_000, 10)]).into_string();
        assert!(
            html.contains("points=\"0.0,110.0 360.0,60.0 720.0,10.0\""),
            "{html}"
        );
    }
}
