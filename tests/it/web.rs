//! The dashboard (issue 14), against the real daemon binary and the emulator: in a real browser
//! (Debian's chromium through chromedriver: live progress, thumbnails the browser decodes, the
//! failures filter, the CSV download, login and logout, hostile names rendered as text, forged
//! actions refused, traversal refused), and over plain HTTP for scripts (Basic, bearer, actions,
//! the refusal of a public listener without authentication, `web-user`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use claid_hotfolder::emulator::{Latency, Scenario};
use serde_json::json;

use crate::support::webdriver::{Browser, chromedriver};
use crate::support::{TestEnv, cli, raw_get, stop, wait_for, wait_until, web_user_add};

const DEADLINE: Duration = Duration::from_secs(90);
const PASSWORD: &str = "a long test password";
const TOKEN: &str = "0123456789abcdef0123456789abcdef-token";

/// A manifest of `n` demo images named `<prefix>NNN`; the indexes in `corrupt` get inputs the
/// emulator fails (task ERROR → `claid-error`).
fn manifest(n: usize, prefix: &str, corrupt: &[usize]) -> String {
    let mut text =
        String::from("operations: { resizing: { width: 96 } }\noutput: { format: png }\nimages:\n");
    for i in 0..n {
        let name = if corrupt.contains(&i) { "corrupt-" } else { "" };
        text.push_str(&format!(
            "  - input: storage://demo/{name}{prefix}{i:03}-160x120.png\n"
        ));
    }
    text
}

/// A users file with `alice`, written by the real `web-user add`.
async fn users_file(env: &TestEnv) -> PathBuf {
    let path = env.dir.path().join("users");
    let (code, out) = web_user_add(&path, "alice", PASSWORD).await;
    assert_eq!(code, 0, "{out}");
    path
}

fn web_section(users: Option<&Path>, token: Option<&Path>, allow_actions: bool) -> String {
    let mut text = format!("web:\n  listen: 127.0.0.1:0\n  allow_actions: {allow_actions}\n");
    if let Some(users) = users {
        text.push_str(&format!("  users_file: {}\n", users.display()));
    }
    if let Some(token) = token {
        text.push_str(&format!("  token_file: {}\n", token.display()));
    }
    text
}

fn token_file(env: &TestEnv) -> PathBuf {
    let path = env.dir.path().join("token");
    std::fs::write(&path, format!("{TOKEN}\n")).expect("token");
    path
}

/// A client that leaves redirects to the test (an action answers 303 to its page).
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// A dashboard page as a script reads it: the bearer token; its text.
async fn page_with_token(http: &reqwest::Client, url: impl reqwest::IntoUrl) -> String {
    http.get(url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("page")
}

/// A dashboard action posted as a script posts it: the bearer token, a form.
async fn post_with_token(
    http: &reqwest::Client,
    url: impl reqwest::IntoUrl,
    form: &[(&str, &str)],
) -> reqwest::Response {
    http.post(url)
        .bearer_auth(TOKEN)
        .form(form)
        .send()
        .await
        .expect("post")
}

/// A daemon whose dashboard takes actions from a script (the bearer token), and its address.
async fn daemon_taking_actions(env: &TestEnv) -> (tokio::process::Child, String) {
    let token = token_file(env);
    let config = env.config("", &web_section(None, Some(&token), true));
    let daemon = env.spawn_daemon(&config, 0);
    let base = format!("http://{}", env.dashboard(0).await);
    (daemon, base)
}

/// The status JSON of the daemon of `config` over its admin socket.
async fn status(env: &TestEnv) -> serde_json::Value {
    match claid_hotfolder::admin::request(&env.socket(), "GET", "/status", None).await {
        Ok((200, body)) => serde_json::from_slice(&body).unwrap_or_default(),
        _ => serde_json::Value::Null,
    }
}

/// The run id of `rel` once the daemon has registered it.
async fn run_id(env: &TestEnv, rel: &str) -> u64 {
    wait_for("the run is registered", DEADLINE, async || {
        status(env).await["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["manifest"] == rel)
            .and_then(|m| m["id"].as_u64())
    })
    .await
}

/// Waits until the run of `rel` has ended (finished, with every job done or failed).
async fn wait_finished(env: &TestEnv, rel: &str) {
    wait_for("the run finishes", DEADLINE, async || {
        status(env).await["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["manifest"] == rel && m["finished"] == true)
            .then_some(())
    })
    .await;
}

/// The value of the progress bar `css` in the page, -1 when there is none.
async fn progress(browser: &Browser, css: &str) -> f64 {
    browser
        .script(
            "const p = document.querySelector(arguments[0]); return p ? Number(p.value) : -1;",
            vec![json!(css)],
        )
        .await
        .as_f64()
        .unwrap_or(-1.0)
}

/// The text of the element `css` in the page, empty when there is none.
async fn text_of(browser: &Browser, css: &str) -> String {
    browser
        .script(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';",
            vec![json!(css)],
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Where screenshots go: `docs/img/` with `CLAID_UPDATE_SCREENSHOTS=1`, else the test's folder.
fn screenshot_path(env: &TestEnv, name: &str) -> PathBuf {
    if std::env::var("CLAID_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("docs/img")
            .join(name)
    } else {
        env.dir.path().join(name)
    }
}

async fn save_screenshot(browser: &Browser, path: &Path) {
    let png = browser.screenshot().await;
    let decoded = image::load_from_memory(&png).expect("the screenshot is a PNG");
    assert!(decoded.width() >= 800, "a real page was drawn");
    std::fs::write(path, png).expect("screenshot written");
}

async fn log_in(browser: &Browser, base: &str) {
    browser.goto(&format!("{base}/")).await;
    assert!(
        browser.url().await.contains("/login"),
        "an anonymous visit goes to the login form: {}",
        browser.url().await
    );
    browser.type_into("#username", "alice").await;
    browser.type_into("#password", PASSWORD).await;
    browser.click("#login").await;
    wait_for("the overview after the login", DEADLINE, async || {
        browser.try_find("#service-state").await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_in_a_browser_shows_live_progress_thumbnails_failures_and_the_csv() {
    let Some(driver) =
        chromedriver("dashboard_in_a_browser_shows_live_progress_thumbnails_failures_and_the_csv")
    else {
        return;
    };
    let env = TestEnv::new(Scenario::default().seed(3).latency(Latency::Uniform {
        min: Duration::from_millis(300),
        max: Duration::from_millis(1500),
    }))
    .await;
    let users = users_file(&env).await;
    // One output is there already and `on_output_exists: fail` keeps it: a second failure code.
    std::fs::create_dir_all(env.outbox.join("spring/shoes")).expect("outbox");
    std::fs::write(env.outbox.join("spring/shoes/shoe005-160x120.png"), b"kept").expect("kept");
    let config = env.config(
        "max_in_flight: 3",
        &format!(
            "on_output_exists: fail\n{}",
            web_section(Some(&users), None, true)
        ),
    );
    let mut daemon = env.spawn_daemon(&config, 0);
    let base = format!("http://{}", env.dashboard(0).await);
    let downloads = env.dir.path().join("downloads");
    std::fs::create_dir_all(&downloads).expect("downloads");
    let browser = Browser::start(&driver, &downloads).await;

    log_in(&browser, &base).await;
    assert!(browser.text("#service-state").await.contains("Running"));

    // Progress advances in the open page, refreshed by live.js, without a reload.
    env.drop_file(
        "spring/shoes.yaml",
        manifest(24, "shoe", &[2, 9]).as_bytes(),
    );
    let id = run_id(&env, "spring/shoes.yaml").await;
    let bar = format!("#progress-{id}");
    browser
        .script("window.__same_page = true; return null;", vec![])
        .await;
    let first = wait_for("the run's progress bar appears", DEADLINE, async || {
        let value = progress(&browser, &bar).await;
        (value >= 0.0).then_some(value)
    })
    .await;
    wait_for("the progress bar advances", DEADLINE, async || {
        (progress(&browser, &bar).await > first).then_some(())
    })
    .await;
    assert_eq!(
        browser
            .script("return window.__same_page === true;", vec![])
            .await,
        json!(true),
        "the page was updated in place, not reloaded"
    );
    // Mid-run: the active manifest with its progress bar.
    save_screenshot(&browser, &screenshot_path(&env, "dashboard-overview.png")).await;
    wait_finished(&env, "spring/shoes.yaml").await;
    wait_for(
        "the overview lists the finished run",
        DEADLINE,
        async || {
            text_of(&browser, "#recent")
                .await
                .contains("spring/shoes.yaml")
                .then_some(())
        },
    )
    .await;

    // The manifest page: every done image's thumbnail decoded by the browser.
    browser.goto(&format!("{base}/manifests/{id}")).await;
    let widths = wait_for("every thumbnail loaded", DEADLINE, async || {
        let widths = browser
            .script(
                "return Array.from(document.querySelectorAll('img.thumb')).map(i => i.complete ? i.naturalWidth : -1);",
                vec![],
            )
            .await;
        let widths = widths.as_array()?.clone();
        (!widths.is_empty() && widths.iter().all(|w| w.as_i64() != Some(-1))).then_some(widths)
    })
    .await;
    assert_eq!(
        widths.len(),
        21,
        "24 images, 2 corrupt, 1 kept output: {widths:?}"
    );
    assert!(
        widths.iter().all(|w| w.as_i64().is_some_and(|w| w > 0)),
        "the browser decoded every thumbnail: {widths:?}"
    );
    save_screenshot(&browser, &screenshot_path(&env, "dashboard-manifest.png")).await;

    // The state filter: only the failed rows, with the code and Claid's message.
    browser
        .goto(&format!("{base}/manifests/{id}?state=failed"))
        .await;
    let failed = browser
        .script(
            "return Array.from(document.querySelectorAll('#jobs tbody tr')).map(r => [r.className, r.querySelector('td.failure').textContent]);",
            vec![],
        )
        .await;
    let failed = failed.as_array().expect("rows");
    assert_eq!(failed.len(), 3, "{failed:?}");
    let text = serde_json::to_string(failed).expect("json");
    assert_eq!(text.matches("claid-error").count(), 2, "{text}");
    assert_eq!(text.matches("output-exists").count(), 1, "{text}");

    // The CSV report downloads through the browser.
    browser.goto(&format!("{base}/manifests/{id}")).await;
    browser.click("#report-csv").await;
    let csv = downloads.join("shoes.report.csv");
    wait_until("the CSV is downloaded", DEADLINE, || {
        std::fs::read_to_string(&csv).is_ok_and(|t| t.lines().count() == 25)
    })
    .await;
    let text = std::fs::read_to_string(&csv).expect("csv");
    assert!(text.starts_with("input,output,status"), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.contains(",failed,")).count(),
        3,
        "{text}"
    );

    // The failures page, filtered by code.
    browser.goto(&format!("{base}/failures")).await;
    let codes = browser
        .script(
            "return Array.from(document.querySelectorAll('section.failure-group')).map(s => s.dataset.code).sort();",
            vec![],
        )
        .await;
    assert_eq!(codes, json!(["claid-error", "output-exists"]));
    browser
        .script(
            "document.querySelector('#code').value = 'output-exists'; return null;",
            vec![],
        )
        .await;
    browser.click("#filter").await;
    wait_for("the filtered failures", DEADLINE, async || {
        browser
            .url()
            .await
            .contains("code=output-exists")
            .then_some(())
    })
    .await;
    let codes = browser
        .script(
            "return Array.from(document.querySelectorAll('section.failure-group')).map(s => [s.dataset.code, s.querySelectorAll('tbody tr').length]);",
            vec![],
        )
        .await;
    assert_eq!(codes, json!([["output-exists", 1]]));

    // Logging out ends the session.
    browser.click("#logout").await;
    wait_for("the login form after logout", DEADLINE, async || {
        browser.url().await.contains("/login").then_some(())
    })
    .await;
    browser.goto(&format!("{base}/manifests/{id}")).await;
    assert!(
        browser.url().await.contains("/login"),
        "the session is gone: {}",
        browser.url().await
    );
    drop(browser);
    stop(&mut daemon).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_in_a_browser_renders_hostile_names_as_text_and_refuses_forged_requests() {
    let Some(driver) = chromedriver(
        "dashboard_in_a_browser_renders_hostile_names_as_text_and_refuses_forged_requests",
    ) else {
        return;
    };
    let env = TestEnv::new(Scenario::default().seed(5)).await;
    let users = users_file(&env).await;
    let config = env.config("", &web_section(Some(&users), None, true));
    let mut daemon = env.spawn_daemon(&config, 0);
    let addr = env.dashboard(0).await;
    let base = format!("http://{addr}");
    let hostile = "<img src=x onerror=alert(1)>.yaml";
    env.drop_file(hostile, manifest(3, "h", &[1]).as_bytes());
    let rejected = "\"><svg onload=alert(2)>.yaml";
    env.drop_file(rejected, b"images: [ { input: 12 } ]\n");
    let id = run_id(&env, hostile).await;
    wait_finished(&env, hostile).await;
    wait_until("the rejected file", DEADLINE, || {
        env.rejected.join(rejected).is_file()
    })
    .await;

    let downloads = env.dir.path().join("downloads");
    let browser = Browser::start(&driver, &downloads).await;
    log_in(&browser, &base).await;
    for page in ["/", &format!("/manifests/{id}"), "/rejected", "/failures"] {
        browser.goto(&format!("{base}{page}")).await;
        let injected = browser
            .script(
                "return document.querySelectorAll('img[src=\"x\"], img[onerror], svg[onload], [onload]').length;",
                vec![],
            )
            .await;
        assert_eq!(injected, json!(0), "no element was injected on {page}");
        assert!(!browser.dialog_open().await, "no alert ran on {page}");
    }
    browser.goto(&format!("{base}/manifests/{id}")).await;
    assert_eq!(browser.text("h1.manifest-name").await, hostile);
    browser.goto(&format!("{base}/rejected")).await;
    assert_eq!(browser.text("article.rejected h2.file").await, rejected);

    // A forged action: the session cookie goes along, the CSRF token does not.
    let form = |body: &str| {
        json!({
            "method": "POST",
            "headers": { "Content-Type": "application/x-www-form-urlencoded" },
            "body": body,
            "redirect": "manual",
        })
    };
    let action = format!("/manifests/{id}/retry-failed");
    assert_eq!(browser.fetch_status(&action, form("")).await, 403);
    assert_eq!(
        browser.fetch_status(&action, form("csrf=forged")).await,
        403
    );
    assert!(
        !env.daemon_log(0).contains("action=\"retry-failed\"")
            && !env.daemon_log(0).contains("action=retry-failed"),
        "nothing was done"
    );
    // The page's own form carries the token: the action is taken and audited.
    browser.goto(&format!("{base}/manifests/{id}")).await;
    browser.click("#retry-failed").await;
    wait_for("the action's notice", DEADLINE, async || {
        browser.try_find("p.flash").await
    })
    .await;
    assert!(
        browser
            .text("p.flash")
            .await
            .contains("Requeued 1 failed job")
    );
    wait_until("the audit line", DEADLINE, || {
        env.daemon_log(0).lines().any(|l| {
            l.contains("Dashboard action") && l.contains("retry-failed") && l.contains("alice")
        })
    })
    .await;

    // Paths out of the outbox are refused: traversal, encoded separators, links.
    std::fs::create_dir_all(env.outbox.join("h")).expect("outbox");
    let outside = env.dir.path().join("outside.png");
    std::fs::write(&outside, crate::support::png(32, 32)).expect("outside");
    std::os::unix::fs::symlink(&outside, env.outbox.join("leak.png")).expect("link");
    std::os::unix::fs::symlink(env.dir.path(), env.outbox.join("up")).expect("dir link");
    for path in [
        "/thumb/..%2Foutside.png",
        "/thumb/..%2f..%2fetc%2fpasswd",
        "/thumb/leak.png",
        "/thumb/up/outside.png",
        "/report/up/outside.png",
        "/file/leak.png",
    ] {
        let status = browser.fetch_status(path, json!({})).await;
        assert!(status == 400 || status == 404, "{path}: {status}");
        assert_ne!(status, 200, "{path}");
    }
    drop(browser);
    // Literal `..` reaches the daemon only from a raw client (browsers normalise it away).
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("alice:{PASSWORD}")
        )
    );
    for target in [
        "/thumb/../outside.png",
        "/thumb/h/../../outside.png",
        "/report/../outside.png",
        "/file/../outside.png",
        "/thumb/%2e%2e/outside.png",
    ] {
        let (status, body) = raw_get(&addr, target, &[("Authorization", &basic)]);
        assert_eq!(status, 400, "{target}: {body}");
    }
    let inside = format!(
        "/thumb/{}/h000-160x120.png",
        "<img src=x onerror=alert(1)>"
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            })
            .collect::<String>()
    );
    let (status, _) = raw_get(&addr, &inside, &[("Authorization", &basic)]);
    assert_eq!(
        status, 200,
        "an output inside the outbox is served: {inside}"
    );
    stop(&mut daemon).await;
}

/// A dashboard without a login answers only to loopback host names and the host of
/// `web.public_url` (it answered any `Host`, so a page elsewhere could read it through a name
/// of its own pointed at 127.0.0.1: DNS rebinding).
#[tokio::test(flavor = "multi_thread")]
async fn dashboard_without_a_login_answers_only_to_loopback_host_names() {
    let env = TestEnv::new(Scenario::default().seed(8)).await;
    let section = format!(
        "{}  public_url: https://claid.example.com\n",
        web_section(None, None, false)
    );
    let config = env.config("", &section);
    let mut daemon = env.spawn_daemon(&config, 0);
    let addr = env.dashboard(0).await;
    let http = reqwest::Client::new();
    let status = |host: String| {
        let (http, addr) = (http.clone(), addr.clone());
        async move {
            http.get(format!("http://{addr}/"))
                .header(reqwest::header::HOST, host)
                .send()
                .await
                .expect("get")
                .status()
                .as_u16()
        }
    };
    let port = addr.rsplit(':').next().expect("a port").to_owned();
    assert_eq!(status(format!("127.0.0.1:{port}")).await, 200);
    assert_eq!(status(format!("localhost:{port}")).await, 200);
    assert_eq!(status(format!("localhost.:{port}")).await, 200);
    assert_eq!(status(format!("[::1]:{port}")).await, 200);
    assert_eq!(status("claid.example.com".to_owned()).await, 200);
    assert_eq!(status(format!("rebound.attacker.test:{port}")).await, 421);
    stop(&mut daemon).await;
}

/// The overview's rate-limit figure is the limit the client keeps now: lower than the config's
/// once Claid announced a lower quota in its `RateLimit` headers (it showed the config's 120
/// while the daemon kept to Claid's 60).
#[tokio::test(flavor = "multi_thread")]
async fn dashboard_rate_limit_figure_follows_a_lower_quota_claid_announced() {
    let env = TestEnv::new(Scenario::default().rpm(60).seed(7)).await;
    let token = token_file(&env);
    let config = env.config("", &web_section(None, Some(&token), false));
    let mut daemon = env.spawn_daemon(&config, 0);
    let base = format!("http://{}", env.dashboard(0).await);
    env.drop_file("q.yaml", manifest(2, "q", &[]).as_bytes());
    wait_finished(&env, "q.yaml").await;
    let page = page_with_token(&reqwest::Client::new(), format!("{base}/")).await;
    let figure = page
        .split("rate-limit")
        .nth(1)
        .expect("the rate-limit figure");
    let value: String = figure.chars().take(200).collect();
    assert!(value.contains(" / 60<"), "Claid's 60 a minute: {value}");
    stop(&mut daemon).await;
}

/// While submitting is paused (no credits), the overview counts the images waiting as
/// `/status` does, from the store (it said "Queued 0" beside a run with 3 queued: the
/// in-memory queue holds none while paused), and its banner says what ends the pause.
#[tokio::test(flavor = "multi_thread")]
async fn dashboard_while_paused_counts_the_queued_images_and_says_what_resumes() {
    let env = TestEnv::new(Scenario::default().seed(8)).await;
    env.emulator.control().set_credits_exhausted(true);
    let token = token_file(&env);
    let config = env.config("", &web_section(None, Some(&token), false));
    let mut daemon = env.spawn_daemon(&config, 0);
    let base = format!("http://{}", env.dashboard(0).await);
    env.drop_file("p.yaml", manifest(3, "p", &[]).as_bytes());
    wait_for("paused with 3 queued", DEADLINE, async || {
        let s = status(&env).await;
        (s["daemon"]["health"] == "paused" && s["daemon"]["queued"] == 3).then_some(())
    })
    .await;
    let page = page_with_token(&reqwest::Client::new(), format!("{base}/")).await;
    let figure: String = page
        .split("id=\"queued\"")
        .nth(1)
        .expect("the queued figure")
        .chars()
        .take(120)
        .collect();
    assert!(figure.contains(">3<"), "3 queued: {figure}");
    assert!(page.contains("out of credits (402)"), "{page}");
    assert!(page.contains("has credits again"), "{page}");
    stop(&mut daemon).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_for_scripts_takes_basic_or_a_bearer_token_and_csrf_guards_basic_posts() {
    let env = TestEnv::new(Scenario::default().seed(6)).await;
    let users = users_file(&env).await;
    let token = token_file(&env);
    let config = env.config("", &web_section(Some(&users), Some(&token), true));
    let mut daemon = env.spawn_daemon(&config, 0);
    let base = format!("http://{}", env.dashboard(0).await);
    env.drop_file("s.yaml", manifest(3, "s", &[0]).as_bytes());
    let id = run_id(&env, "s.yaml").await;
    wait_finished(&env, "s.yaml").await;
    let http = no_redirects();

    let anonymous = http.get(format!("{base}/")).send().await.expect("get");
    assert_eq!(anonymous.status(), 401);
    assert!(
        anonymous.headers()[reqwest::header::WWW_AUTHENTICATE]
            .to_str()
            .expect("header")
            .starts_with("Basic")
    );
    let basic = http
        .get(format!("{base}/manifests/{id}"))
        .basic_auth("alice", Some(PASSWORD))
        .send()
        .await
        .expect("get");
    assert_eq!(basic.status(), 200);
    let page = basic.text().await.expect("page");
    assert!(
        page.contains("s.yaml") && page.contains("claid-error"),
        "{page}"
    );
    let csp = http
        .get(format!("{base}/"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("get");
    assert_eq!(csp.status(), 200);
    assert!(
        csp.headers()[reqwest::header::CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("csp")
            .contains("script-src 'self'")
    );
    for (user, password) in [("alice", "wrong password"), ("mallory", PASSWORD)] {
        let res = http
            .get(format!("{base}/"))
            .basic_auth(user, Some(password))
            .send()
            .await
            .expect("get");
        assert_eq!(res.status(), 401, "{user}");
    }
    let wrong_token = http
        .get(format!("{base}/"))
        .bearer_auth("not the token at all, but long enough")
        .send()
        .await
        .expect("get");
    assert_eq!(wrong_token.status(), 401);

    // A Basic POST needs the CSRF token of its page (a browser sends Basic credentials on its
    // own); a bearer POST does not (no browser sends that header by itself).
    let action = format!("{base}/manifests/{id}/retry-failed");
    let res = http
        .post(&action)
        .basic_auth("alice", Some(PASSWORD))
        .form(&[("csrf", "")])
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 403);
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page's forms carry a CSRF token")
        .to_owned();
    let res = http
        .post(&action)
        .basic_auth("alice", Some(PASSWORD))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 303, "{:?}", res.text().await);
    wait_finished(&env, "s.yaml").await;
    let res = post_with_token(&http, &action, &[("x", "")]).await;
    assert_eq!(res.status(), 303);
    let log = env.daemon_log(0);
    let audits: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Dashboard action"))
        .collect();
    assert_eq!(audits.len(), 2, "{audits:?}");
    assert!(
        audits[0].contains("alice") && audits[1].contains("token"),
        "{audits:?}"
    );
    stop(&mut daemon).await;
}

/// The overview's finished runs say when each was taken in (two runs of one file were two
/// identical rows) and, past the 20 it lists, that older ones are left out (it said nothing).
#[tokio::test(flavor = "multi_thread")]
async fn the_overview_tells_finished_runs_apart_and_says_when_it_leaves_some_out() {
    let env = TestEnv::new(Scenario::default()).await;
    let (mut daemon, base) = daemon_taking_actions(&env).await;
    let http = no_redirects();
    let overview = async || page_with_token(&http, format!("{base}/partial/overview")).await;
    env.drop_file("m00.yaml", manifest(1, "a", &[]).as_bytes());
    wait_finished(&env, "m00.yaml").await;
    let page = overview().await;
    assert!(page.contains("Taken in (UTC)"), "{page}");
    let year = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    assert!(
        page.contains(&format!("<td class=\"when\">{}", &year[..4])),
        "{page}"
    );
    assert!(!page.contains("older-runs"), "{page}");
    for i in 1..=20 {
        env.drop_file(
            &format!("m{i:02}.yaml"),
            manifest(1, &format!("b{i}-"), &[]).as_bytes(),
        );
    }
    wait_finished(&env, "m20.yaml").await;
    wait_for("every run finished", DEADLINE, async || {
        let view = status(&env).await;
        let runs = view["manifests"].as_array()?;
        (runs.len() == 21 && runs.iter().all(|m| m["finished"] == true)).then_some(())
    })
    .await;
    let page = overview().await;
    assert!(page.contains("id=\"older-runs\""), "{page}");
    assert!(
        !page.contains(">m00.yaml<"),
        "the oldest is left out: {page}"
    );
    stop(&mut daemon).await;
}

/// A retry the daemon refuses (here: a later manifest of the same stem, `s.json` after
/// `s.yaml`, writes the report now) is told with its reason, as the CLI tells it: the page said
/// "Requeued 0 failed job(s); they run again now" and nothing ran.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_dashboard_retry_says_why() {
    let env = TestEnv::new(Scenario::default()).await;
    let (mut daemon, base) = daemon_taking_actions(&env).await;
    let http = no_redirects();
    env.drop_file("s.yaml", manifest(2, "s", &[1]).as_bytes());
    let id = run_id(&env, "s.yaml").await;
    wait_finished(&env, "s.yaml").await;
    env.drop_file(
        "s.json",
        br#"{"images": [{"input": "storage://demo/j000-160x120.png", "output": "other.jpg"}]}"#,
    );
    wait_finished(&env, "s.json").await;
    let res = post_with_token(
        &http,
        format!("{base}/manifests/{id}/retry-failed"),
        &[("x", "")],
    )
    .await;
    assert_eq!(res.status(), 409);
    let page = res.text().await.expect("page");
    assert!(page.contains("Not requeued"), "{page}");
    assert!(page.contains("s.json"), "{page}");
    let log = env.daemon_log(0);
    assert!(
        log.lines()
            .any(|l| l.contains("Dashboard action refused") && l.contains("retry-failed")),
        "{log}"
    );
    assert_eq!(
        status(&env).await["manifests"][0]["failed"],
        1,
        "nothing ran again"
    );
    stop(&mut daemon).await;
}

/// A retry the daemon takes for some of a run's jobs only (here: one failed job's local input
/// is no longer in the inbox) says how many it left and where they are named: the page said
/// "Requeued 1 failed job(s)" alone, and the refusal was in the log only.
#[tokio::test(flavor = "multi_thread")]
async fn a_dashboard_retry_refused_for_some_jobs_says_how_many_were_left() {
    let env = TestEnv::new(Scenario::default()).await;
    let (mut daemon, base) = daemon_taking_actions(&env).await;
    let http = no_redirects();
    let png = crate::support::png(64, 48);
    env.drop_file("in/corrupt-a.png", &png);
    env.drop_file("in/corrupt-b.png", &png);
    env.drop_file(
        "p.yaml",
        b"images:\n  - input: in/corrupt-a.png\n  - input: in/corrupt-b.png\n",
    );
    let id = run_id(&env, "p.yaml").await;
    wait_finished(&env, "p.yaml").await;
    assert_eq!(status(&env).await["manifests"][0]["failed"], 2);
    std::fs::remove_file(env.inbox.join("in/corrupt-b.png")).expect("rm");
    let res = post_with_token(
        &http,
        format!("{base}/manifests/{id}/retry-failed"),
        &[("x", "")],
    )
    .await;
    assert_eq!(res.status(), 303);
    let to = res.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    assert!(to.contains("n=1") && to.contains("refused=1"), "{to}");
    let page = page_with_token(&http, format!("{base}{to}")).await;
    assert!(
        page.contains("Requeued 1 failed job;") && page.contains("1 other job was not requeued"),
        "{page}"
    );
    let log = env.daemon_log(0);
    assert!(
        log.lines()
            .any(|l| l.contains("some jobs were not requeued") && l.contains("corrupt-b.png")),
        "{log}"
    );
    stop(&mut daemon).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_actions_release_in_doubt_jobs_and_rerun_a_fixed_rejected_manifest() {
    let env = TestEnv::new(Scenario::default().seed(11).drop_share(0.5)).await;
    let token = token_file(&env);
    let config = env.config(
        "",
        &format!("in_doubt: hold\n{}", web_section(None, Some(&token), true)),
    );
    let mut daemon = env.spawn_daemon(&config, 0);
    let base = format!("http://{}", env.dashboard(0).await);
    let http = no_redirects();
    env.drop_file("d.yaml", manifest(8, "d", &[]).as_bytes());
    let id = run_id(&env, "d.yaml").await;
    let release = format!("{base}/manifests/{id}/release-in-doubt");
    let mut rounds = 0;
    loop {
        let view = wait_for("nothing queued or in flight", DEADLINE, async || {
            let view = status(&env).await;
            let m = &view["manifests"][0];
            (m.is_object() && m["in_flight"] == 0 && m["queued"] == 0).then_some(view)
        })
        .await;
        let held = view["manifests"][0]["in_doubt"].as_u64().unwrap_or(0);
        if held == 0 {
            break;
        }
        rounds += 1;
        assert!(rounds < 20, "in-doubt jobs keep coming back: {view:#}");
        let unconfirmed = post_with_token(&http, &release, &[("x", "")]).await;
        assert_eq!(unconfirmed.status(), 400, "the warning must be confirmed");
        let res = post_with_token(&http, &release, &[("confirm", "yes")]).await;
        assert_eq!(res.status(), 303);
    }
    assert!(
        rounds > 0,
        "with half the submit responses dropped some jobs were held"
    );
    wait_until("every output", DEADLINE, || {
        TestEnv::files_under(&env.outbox.join("d")).len() == 8
    })
    .await;
    assert!(
        env.daemon_log(0)
            .lines()
            .any(|l| l.contains("Dashboard action") && l.contains("release-in-doubt")),
        "audited"
    );

    // A rejected manifest, fixed where it lies, goes back into the inbox and runs.
    env.drop_file("later/fix.yaml", b"images: [ { input: 12 } ]\n");
    let in_rejected = env.rejected.join("later/fix.yaml");
    wait_until("the rejected manifest", DEADLINE, || in_rejected.is_file()).await;
    let error_file = env.rejected.join("later/fix.yaml.error.txt");
    wait_until("its error file", DEADLINE, || error_file.is_file()).await;
    std::fs::write(&in_rejected, manifest(2, "f", &[])).expect("fixed");
    // Its error file is no file to re-run: refused, both files stay where they are.
    let res = post_with_token(
        &http,
        format!("{base}/rejected/rerun"),
        &[("file", "later/fix.yaml.error.txt")],
    )
    .await;
    assert_eq!(res.status(), 400);
    let page = res.text().await.expect("page");
    assert!(page.contains("error file"), "{page}");
    assert!(in_rejected.is_file() && error_file.is_file());
    assert!(!env.inbox.join("later/fix.yaml.error.txt").exists());
    let res = post_with_token(
        &http,
        format!("{base}/rejected/rerun"),
        &[("file", "later/fix.yaml")],
    )
    .await;
    assert_eq!(res.status(), 303);
    assert!(!in_rejected.exists() && !error_file.exists());
    // It is read again and registered (its jobs then run like any others').
    run_id(&env, "later/fix.yaml").await;
    // A file rejected a second time is kept as `twice.1.yaml`; re-run, it goes back to its
    // own name (its outputs and report under it), not to `twice.1.yaml`.
    for kept in ["later/twice.yaml", "later/twice.1.yaml"] {
        env.drop_file("later/twice.yaml", b"images: [ { input: 12 } ]\n");
        let error_file = env.rejected.join(format!("{kept}.error.txt"));
        wait_until("the rejected manifest", DEADLINE, || error_file.is_file()).await;
    }
    std::fs::write(
        env.rejected.join("later/twice.1.yaml"),
        manifest(2, "t", &[]),
    )
    .expect("fixed");
    let res = post_with_token(
        &http,
        format!("{base}/rejected/rerun"),
        &[("file", "later/twice.1.yaml")],
    )
    .await;
    assert_eq!(res.status(), 303);
    run_id(&env, "later/twice.yaml").await;
    for bad in ["../d.yaml", "/etc/passwd", "later/../../x"] {
        let res = post_with_token(&http, format!("{base}/rejected/rerun"), &[("file", bad)]).await;
        assert_eq!(res.status(), 400, "{bad}");
        // Said as the path it is (one in the rejected folder), not as an output path.
        let page = res.text().await.expect("page");
        assert!(
            page.contains("not a path inside the rejected folder"),
            "{bad}: {page}"
        );
    }
    stop(&mut daemon).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_actions_are_refused_unless_allowed() {
    let env = TestEnv::new(Scenario::default().seed(7)).await;
    let token = token_file(&env);
    let config = env.config("", &web_section(None, Some(&token), false));
    let mut daemon = env.spawn_daemon(&config, 0);
    let base = format!("http://{}", env.dashboard(0).await);
    env.drop_file("a.yaml", manifest(2, "a", &[0]).as_bytes());
    let id = run_id(&env, "a.yaml").await;
    wait_finished(&env, "a.yaml").await;
    let http = reqwest::Client::new();
    let page = page_with_token(&http, format!("{base}/manifests/{id}")).await;
    assert!(!page.contains("retry-failed"), "no action is offered");
    let res = post_with_token(
        &http,
        format!("{base}/manifests/{id}/retry-failed"),
        &[("x", "")],
    )
    .await;
    assert_eq!(res.status(), 403);
    stop(&mut daemon).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_refuses_a_public_listener_without_authentication() {
    let env = TestEnv::new(Scenario::default()).await;
    let config = env.config("", "web:\n  listen: 0.0.0.0:0\n");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("web.listen") && stderr.contains("web-user add"),
        "{stderr}"
    );
    let config = env.config("", "web:\n  allow_actions: true\n");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("web.allow_actions"), "{stderr}");
    // A users file that is not there stops the start and says how to make one.
    let config = env.config(
        "",
        &web_section(Some(&env.dir.path().join("missing-users")), None, false),
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(
        code, 64,
        "a configured file that is missing is a configuration error (the exit-code table): {stderr}"
    );
    assert!(stderr.contains("web-user add"), "{stderr}");
}

#[tokio::test]
async fn web_user_writes_salted_argon2_hashes_and_never_the_password() {
    let dir = tempfile::tempdir().expect("dir");
    let users = dir.path().join("users");
    for name in ["alice", "bob"] {
        let (code, out) = web_user_add(&users, name, PASSWORD).await;
        assert_eq!(code, 0, "{out}");
    }
    let text = std::fs::read_to_string(&users).expect("users");
    assert!(!text.contains(PASSWORD));
    let hashes: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split_once(':').expect("NAME:HASH").1)
        .collect();
    assert_eq!(hashes.len(), 2);
    assert!(
        hashes.iter().all(|h| h.starts_with("$argon2id$")),
        "{hashes:?}"
    );
    assert_ne!(hashes[0], hashes[1], "each user has their own salt");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&users)
        .expect("meta")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o640);
    // Mistakes in what was asked for are usage errors (64), not I/O errors.
    let (code, out) = web_user_add(&users, "carol", "short").await;
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("too short"), "{out}");
    let (code, out) = web_user_add(&users, "carol", "").await;
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("no password was given"), "{out}");
    let (code, out) = web_user_add(&users, "bad:name", PASSWORD).await;
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("`bad:name` is not"), "{out}");
    let bare = dir.path().join("no-web.yaml");
    std::fs::write(
        &bare,
        "api: { base_url: embedded }\nfolders: { inbox: i, outbox: o, archive: a, rejected: r, state: s }\n",
    )
    .expect("config");
    let (code, _, err) = cli(&["web-user", "list", "--config", bare.to_str().unwrap()]).await;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("sets no `web.users_file`"), "{err}");
    let file = users.to_str().expect("path");
    let (code, out, err) = cli(&["web-user", "remove", "bob", "--users-file", file]).await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = cli(&["web-user", "list", "--users-file", file]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "alice\n");
    let (code, _, err) = cli(&["web-user", "remove", "bob", "--users-file", file]).await;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("no user `bob`"), "{err}");
}
