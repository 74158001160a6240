//! A small W3C WebDriver client for the dashboard's browser tests: it starts Debian's
//! `chromedriver` on a free loopback port and drives a headless `chromium` with a fresh profile
//! (sessions, navigation, elements, scripts, screenshots). Without chromedriver the tests print
//! "skipped" and return, except under CI (`CI=true`), where they fail: CI installs it.
//! No browser is downloaded at test time.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// The key of an element reference in W3C WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The chromedriver binary, or `None` (after printing "skipped") when it is missing outside CI.
/// Panics when it is missing under CI.
pub fn chromedriver(test: &str) -> Option<PathBuf> {
    let found = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: chromedriver is missing; CI installs Debian's chromium and chromium-driver (.ci/run)"
        );
        println!("{test}: skipped (no chromedriver; apt-get install chromium chromium-driver)");
    }
    found
}

/// A headless Chromium driven over WebDriver.
pub struct Browser {
    http: reqwest::Client,
    base: String,
    port: u16,
    session: String,
    /// Ends chromedriver when the test ends, whatever happens.
    _driver: Child,
    /// The fresh profile (`--user-data-dir`) and chromedriver's log, removed at the end.
    _scratch: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a browser whose downloads go to `downloads`.
    pub async fn start(driver: &Path, downloads: &Path) -> Browser {
        let port = free_port();
        // The profile and the driver's log live in one temporary folder, removed at the end.
        let scratch = tempfile::tempdir().expect("browser folder");
        let log = scratch.path().join("chromedriver.log");
        let profile = scratch.path().join("profile");
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        crate::support::wait_until_async("chromedriver ready", Duration::from_secs(30), || {
            let http = http.clone();
            let url = format!("{base}/status");
            async move {
                match http.get(&url).send().await {
                    Ok(res) => res
                        .json::<Value>()
                        .await
                        .is_ok_and(|v| v["value"]["ready"] == true),
                    Err(_) => false,
                }
            }
        })
        .await;
        let mut options = json!({
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
            "prefs": {
                "download.default_directory": downloads.display().to_string(),
                "download.prompt_for_download": false,
            },
        });
        if let Some(binary) = ["/usr/lib/chromium/chromium", "/usr/bin/chromium"]
            .iter()
            .find(|p| Path::new(p).is_file())
        {
            options["binary"] = json!(binary);
        }
        let body = json!({
            "capabilities": { "alwaysMatch": { "browserName": "chrome", "goog:chromeOptions": options } }
        });
        let res: Value = http
            .post(format!("{base}/session"))
            .json(&body)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session json");
        let session = res["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {res}"))
            .to_owned();
        Browser {
            http,
            base,
            port,
            session,
            _driver: child,
            _scratch: scratch,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, &url);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let value: Value = res.json().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        value["value"].clone()
    }

    async fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let value = self.call(method, path, body).await;
        if let Some(error) = value.get("error") {
            panic!("webdriver {path}: {error}: {}", value["message"]);
        }
        value
    }

    pub async fn goto(&self, url: &str) {
        self.ok(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    pub async fn url(&self) -> String {
        self.ok(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The element `css` selects, or `None`.
    pub async fn try_find(&self, css: &str) -> Option<String> {
        let value = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        value[ELEMENT].as_str().map(str::to_owned)
    }

    pub async fn find(&self, css: &str) -> String {
        self.try_find(css)
            .await
            .unwrap_or_else(|| panic!("no element {css} on {}", self.url_blocking_hint()))
    }

    fn url_blocking_hint(&self) -> String {
        format!("the page (session {})", self.session)
    }

    pub async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.ok(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.ok(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    pub async fn text(&self, css: &str) -> String {
        let id = self.find(css).await;
        self.ok(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its value.
    pub async fn script(&self, script: &str, args: Vec<Value>) -> Value {
        self.ok(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// Runs an async `script`; it calls `arguments[arguments.length - 1](value)` when done.
    pub async fn script_async(&self, script: &str, args: Vec<Value>) -> Value {
        self.ok(
            reqwest::Method::POST,
            "/execute/async",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// `fetch(path, init)` in the page: the answer's status.
    pub async fn fetch_status(&self, path: &str, init: Value) -> u16 {
        let value = self
            .script_async(
                "const done = arguments[arguments.length - 1];
                 fetch(arguments[0], arguments[1]).then(r => done(r.status)).catch(e => done('error: ' + e));",
                vec![json!(path), init],
            )
            .await;
        value
            .as_u64()
            .unwrap_or_else(|| panic!("fetch {path}: {value}")) as u16
    }

    pub async fn screenshot(&self) -> Vec<u8> {
        let value = self.ok(reqwest::Method::GET, "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(value.as_str().unwrap_or_default())
            .expect("screenshot is base64")
    }

    /// Whether a JavaScript dialog (`alert`) is open.
    pub async fn dialog_open(&self) -> bool {
        let value = self.call(reqwest::Method::GET, "/alert/text", None).await;
        value.get("error").is_none()
    }
}

impl Drop for Browser {
    /// Ends the session (chromedriver then ends the browser) with a blocking request, since the
    /// test may be unwinding; chromedriver itself is killed with its `Child`.
    fn drop(&mut self) {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let request = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session, self.port
            );
            if stream.write_all(request.as_bytes()).is_ok() {
                let mut answer = Vec::new();
                let _ = stream.read_to_end(&mut answer);
            }
        }
    }
}

/// A port free on loopback now (the listener is closed before it is used).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
