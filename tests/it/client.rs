//! Tests for the Claid client (`claid::Client`) against a small scripted axum mock server and,
//! for broken connections, a raw TCP server; everything on 127.0.0.1:0.
//!
//! Each single-shot call (`submit_once`, `poll_once`, `upload_once`, `download_once`, `probe`)
//! makes exactly one HTTP attempt: the tests count the requests the server saw. The legacy
//! retrying calls (`submit`, …) are covered by one test while the pipeline still uses them.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use claid_hotfolder::claid::wire::TaskStatus;
use claid_hotfolder::claid::{ClaidError, Client, ClientConfig, Endpoint, ErrorClass};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

const KEY: &str = "sk-test-SECRET-0123456789";

/// One scripted answer.
#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Sent in several chunks without a Content-Length (chunked encoding).
    streamed: bool,
    delay: Duration,
}

impl Reply {
    fn json(status: u16, value: Value) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: value.to_string().into_bytes(),
            streamed: false,
            delay: Duration::ZERO,
        }
    }
    fn raw(status: u16, body: &[u8]) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.to_vec(),
            streamed: false,
            delay: Duration::ZERO,
        }
    }
    fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }
    fn delay(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
    fn streamed(mut self) -> Reply {
        self.streamed = true;
        self
    }
}

/// One request the mock received.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

/// Scripted replies by `"METHOD /path"`: popped in order, the last one repeats.
#[derive(Clone, Default)]
struct Mock {
    script: Arc<Mutex<HashMap<String, VecDeque<Reply>>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Mock {
    fn on(&self, route: &str, replies: Vec<Reply>) -> &Mock {
        self.script
            .lock()
            .unwrap()
            .insert(route.to_owned(), replies.into());
        self
    }
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    fn seen_on(&self, method: &str, path: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == method && s.path == path)
            .collect()
    }
    /// Serves on 127.0.0.1:0; returns `http://127.0.0.1:PORT` (no prefix).
    async fn start(&self) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(self.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}")
    }
}

async fn handle(State(mock): State<Mock>, req: axum::extract::Request) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let headers = req.headers().clone();
    let body = axum::body::to_bytes(req.into_body(), usize::MAX)
        .await
        .unwrap_or_default();
    mock.seen.lock().unwrap().push(Seen {
        method: method.clone(),
        path: path.clone(),
        headers,
        body,
        at: Instant::now(),
    });
    let reply = {
        let mut script = mock.script.lock().unwrap();
        match script.get_mut(&format!("{method} {path}")) {
            Some(queue) if queue.len() > 1 => queue.pop_front(),
            Some(queue) => queue.front().cloned(),
            None => None,
        }
    };
    let reply = reply.unwrap_or_else(|| {
        Reply::json(
            404,
            json!({"error_code":"404","error_type":"general","error_message":"Not found."}),
        )
    });
    tokio::time::sleep(reply.delay).await;
    let body = if reply.streamed {
        let chunks: Vec<Result<Bytes, std::io::Error>> = reply
            .body
            .chunks(1024)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Body::from_stream(futures_util::stream::iter(chunks))
    } else {
        Body::from(reply.body)
    };
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(reply.status).unwrap();
    for (name, value) in reply.headers {
        response.headers_mut().insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    response
}

/// A raw HTTP/1.1 server: reads each request in full, counts it, writes `answer` verbatim
/// (possibly nothing) and closes the connection.
async fn raw_server(answer: &'static [u8]) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = socket.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = socket.write_all(answer).await;
                let _ = socket.flush().await;
            });
        }
    });
    (format!("http://{addr}"), count)
}

fn config(base_url: &str) -> ClientConfig {
    ClientConfig {
        base_url: base_url.to_owned(),
        api_key: KEY.to_owned(),
        requests_per_second: NonZeroU32::new(100).unwrap(),
        requests_per_minute: NonZeroU32::new(100_000).unwrap(),
        request_timeout: Duration::from_secs(5),
        upload_timeout: Duration::from_secs(5),
        max_download_bytes: 1024 * 1024,
    }
}

fn client(base_url: &str) -> Client {
    Client::new(config(base_url)).unwrap()
}

fn task(id: u64, status: &str, result_url: &str) -> Value {
    json!({"data": {"id": id, "status": status, "result_url": result_url,
        "created_at": "2026-01-01T00:00:00Z", "request": {}, "errors": [], "result": {}}})
}

fn edit_body() -> Value {
    json!({"input": "storage://demo/shoe-800x600.png",
        "operations": {"resizing": {"width": 400}}, "output": {"format": "webp"}})
}

const SUBMIT: &str = "POST /v1/image/edit/async";

#[tokio::test]
async fn submit_ok_parses_task_id_result_url_and_request_id() {
    let mock = Mock::default();
    let root = mock.start().await;
    let result_url = format!("{root}/v1/image/edit/async/42");
    mock.on(
        SUBMIT,
        vec![
            Reply::json(200, task(42, "ACCEPTED", &result_url))
                .header("x-request-id", "req-submit-1"),
        ],
    );
    let client = client(&format!("{root}/v1"));
    let accepted = client.submit_once(&edit_body()).await.unwrap();
    assert_eq!(accepted.task_id, 42);
    assert_eq!(accepted.result_url, result_url);
    assert_eq!(accepted.request_id.as_deref(), Some("req-submit-1"));

    let seen = mock.seen_on("POST", "/v1/image/edit/async");
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].headers["authorization"],
        format!("Bearer {KEY}").as_str()
    );
    assert_eq!(seen[0].headers["content-type"], "application/json");
    let sent: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(sent, edit_body());
    assert_eq!(client.stats().responses[&(Endpoint::Submit, 200)], 1);
}

/// `{"data": {"id": 42, "status": "ACCEPTED", …}}` compressed with gzip.
const GZIPPED_ACCEPTED: &[u8] = &[
    31, 139, 8, 0, 0, 0, 0, 0, 2, 3, 29, 140, 193, 10, 194, 48, 16, 68, 255, 101, 207, 213, 77, 66,
    81, 220, 155, 212, 222, 61, 244, 228, 165, 44, 205, 162, 129, 42, 154, 108, 4, 9, 249, 119, 67,
    153, 119, 26, 222, 76, 1, 207, 202, 64, 5, 130, 7, 234, 93, 7, 73, 89, 115, 2, 130, 243, 48,
    140, 215, 105, 188, 64, 7, 75, 20, 86, 241, 51, 107, 235, 157, 113, 135, 157, 177, 141, 201,
    24, 218, 184, 53, 39, 74, 202, 171, 206, 57, 174, 205, 121, 168, 190, 9, 209, 186, 227, 222,
    180, 88, 58, 225, 215, 98, 120, 242, 93, 80, 124, 80, 228, 244, 123, 45, 216, 187, 109, 248,
    201, 146, 218, 115, 169, 181, 254, 1, 68, 141, 142, 90, 144, 0, 0, 0,
];

/// An answer sent gzip-compressed (a front end that compresses JSON; HTTP allows it) is read:
/// a billed submit's answer was "not the expected json", its image held in doubt.
#[tokio::test]
async fn a_gzip_compressed_answer_is_read() {
    let mock = Mock::default();
    let root = mock.start().await;
    mock.on(
        SUBMIT,
        vec![
            Reply::raw(200, GZIPPED_ACCEPTED)
                .header("content-type", "application/json")
                .header("content-encoding", "gzip"),
        ],
    );
    let client = client(&format!("{root}/v1"));
    let accepted = client.submit_once(&edit_body()).await.expect("read");
    assert_eq!(accepted.task_id, 42);
}

#[tokio::test]
async fn poll_follows_the_returned_result_url_even_on_another_prefix() {
    let mock = Mock::default();
    let root = mock.start().await;
    let result_url = format!("{root}/v1-beta1/image/edit/async/7");
    let done = json!({"data": {"id": 7, "status": "DONE", "result_url": result_url,
        "created_at": "2026-01-01T00:00:00.123456+00:00", "request": {}, "errors": [],
        "result": {
            "input_object": {"ext":"png","mps":0.48,"mime":"image/png","format":"png","width":800,"height":600},
            "output_object": {"ext":"webp","mps":0.12,"mime":"image/webp","format":"webp","width":400,"height":300,
                              "tmp_url": format!("{root}/files/7.webp")}}}});
    mock.on(
        SUBMIT,
        vec![Reply::json(200, task(7, "ACCEPTED", &result_url))],
    )
    .on(
        "GET /v1-beta1/image/edit/async/7",
        vec![
            Reply::json(200, task(7, "PROCESSING", &result_url)).header("x-request-id", "p1"),
            Reply::json(200, done).header("x-request-id", "p2"),
        ],
    );
    let client = client(&format!("{root}/v1"));
    let accepted = client.submit_once(&edit_body()).await.unwrap();
    let first = client
        .poll_once(&accepted.result_url, accepted.task_id)
        .await
        .unwrap();
    assert_eq!(first.task.status, TaskStatus::Processing);
    assert_eq!(first.request_id.as_deref(), Some("p1"));
    let second = client
        .poll_once(&accepted.result_url, accepted.task_id)
        .await
        .unwrap();
    assert_eq!(second.task.status, TaskStatus::Done);
    assert_eq!(second.request_id.as_deref(), Some("p2"));
    let output = second.task.result.output_object.unwrap();
    assert_eq!((output.width, output.height), (400, 300));
    assert_eq!(mock.seen_on("GET", "/v1-beta1/image/edit/async/7").len(), 2);
    assert!(mock.seen_on("GET", "/v1/image/edit/async/7").is_empty());
}

/// A poll answered with another task (a cache or proxy mixing answers up) is refused as a
/// bad response, for a single task and for a batch: its result is another image, and was
/// delivered as this job's output.
#[tokio::test]
async fn a_poll_answered_with_another_task_is_refused() {
    let mock = Mock::default();
    let root = mock.start().await;
    let url = format!("{root}/v1/image/edit/async/7");
    mock.on(
        "GET /v1/image/edit/async/7",
        vec![Reply::json(200, task(1007, "PROCESSING", &url))],
    )
    .on(
        "GET /v1/image/edit/batch/8",
        vec![Reply::json(
            200,
            json!({"data": {"id": 1008, "status": "PROCESSING", "result_url": format!("{root}/v1/image/edit/batch/8"),
                "created_at": "2026-01-01T00:00:00+00:00", "request": {}, "errors": [], "result": []}}),
        )],
    );
    let client = client(&format!("{root}/v1"));
    let err = client.poll_once(&url, 7).await.expect_err("another task");
    assert!(
        matches!(err, ClaidError::BadResponse { .. }) && err.to_string().contains("another task"),
        "{err}"
    );
    let err = client
        .poll_batch_once(&format!("{root}/v1/image/edit/batch/8"), 8)
        .await
        .expect_err("another batch");
    assert!(err.to_string().contains("another task"), "{err}");
}

/// A `result_url` on another origin (or no URL at all) never gets the key: the task is polled
/// by its id on the API's origin instead (failing it would lose a task Claid billed).
#[tokio::test]
async fn a_result_url_on_another_origin_is_polled_by_id_on_the_api_without_sending_the_key() {
    let mock = Mock::default();
    let root = mock.start().await;
    let other = Mock::default();
    let other_root = other.start().await;
    let mine = format!("{root}/v1/image/edit/async/1");
    mock.on(
        "GET /v1/image/edit/async/1",
        vec![Reply::json(200, task(1, "PROCESSING", &mine))],
    );
    let client = client(&format!("{root}/v1"));
    for url in [
        format!("{other_root}/v1/image/edit/async/1"),
        "ftp://127.0.0.1/x".to_owned(),
        "not a url".to_owned(),
        String::new(),
    ] {
        let polled = client.poll_once(&url, 1).await.expect(&url);
        assert_eq!(polled.task.status, TaskStatus::Processing, "{url}");
    }
    assert_eq!(mock.seen_on("GET", "/v1/image/edit/async/1").len(), 4);
    assert!(other.seen().is_empty());
}

/// A 429 is not waited out inside the call any more: it comes back at once as a transient
/// `rate-limited` error carrying the reset, and the shared gate it closed makes the next call
/// wait for the reset.
#[tokio::test]
async fn a_429_is_one_attempt_returned_as_rate_limited_and_closes_the_gate() {
    let mock = Mock::default();
    let root = mock.start().await;
    let url = format!("{root}/v1/image/edit/async/1");
    mock.on(
        SUBMIT,
        vec![
            Reply::json(
                429,
                json!({"detail": {"error_code":"2001","error_type":"general",
                    "error_message":"Too Many Requests. Rate limit exceeded."}}),
            )
            .header("ratelimit-limit", "4, 120;w=60, 4;w=1")
            .header("ratelimit-remaining", "-1")
            .header("ratelimit-reset", "1")
            .header("x-request-id", "rl-1"),
            Reply::json(200, task(1, "ACCEPTED", &url)),
        ],
    );
    let client = client(&format!("{root}/v1"));
    let err = client.submit_once(&edit_body()).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient);
    assert_eq!(err.code(), "rate-limited");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
    assert_eq!(err.request_id(), Some("rl-1"));
    assert_eq!(mock.seen_on("POST", "/v1/image/edit/async").len(), 1);

    let accepted = client.submit_once(&edit_body()).await.unwrap();
    assert_eq!(accepted.task_id, 1);
    let seen = mock.seen_on("POST", "/v1/image/edit/async");
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at - seen[0].at;
    assert!(gap >= Duration::from_millis(900), "waited only {gap:?}");
    let stats = client.stats();
    assert_eq!(stats.rate_limited, 1);
    assert_eq!(stats.responses[&(Endpoint::Submit, 429)], 1);
    assert_eq!(stats.retries, 0, "the client retries nothing itself");
    assert!(stats.limiter_waits >= 1);
}

#[tokio::test]
async fn remaining_zero_makes_every_next_call_wait_for_reset() {
    let mock = Mock::default();
    let root = mock.start().await;
    let url = format!("{root}/v1/image/edit/async/1");
    mock.on(
        SUBMIT,
        vec![
            Reply::json(200, task(1, "ACCEPTED", &url))
                .header("ratelimit-remaining", "0")
                .header("ratelimit-reset", "1"),
            Reply::json(200, task(2, "ACCEPTED", &url)),
        ],
    )
    .on(
        "GET /v1/image/edit/async/1",
        vec![Reply::json(200, task(1, "PROCESSING", &url))],
    );
    let client = client(&format!("{root}/v1"));
    client.submit_once(&edit_body()).await.unwrap();
    // Three callers of different endpoints, all behind the same gate.
    let body = edit_body();
    let (a, b, c) = tokio::join!(
        client.submit_once(&body),
        client.poll_once(&url, 1),
        client.poll_once(&url, 1)
    );
    a.unwrap();
    b.unwrap();
    c.unwrap();
    let seen = mock.seen();
    assert_eq!(seen.len(), 4);
    for later in &seen[1..] {
        let gap = later.at - seen[0].at;
        assert!(
            gap >= Duration::from_millis(900),
            "{} came after {gap:?}",
            later.path
        );
    }
    assert!(client.stats().limiter_waits >= 3);
    assert_eq!(client.stats().rate_limited, 0);
}

/// Server errors are transient and each call is one attempt: the caller's retry policy, not
/// the client, decides whether to call again.
#[tokio::test]
async fn server_errors_are_transient_and_each_call_is_one_attempt() {
    let mock = Mock::default();
    let root = mock.start().await;
    let url = format!("{root}/v1/image/edit/async/3");
    mock.on(
        SUBMIT,
        vec![
            Reply::json(
                500,
                json!({"error_code":"500","error_type":"general","error_message":"Internal."}),
            )
            .header("x-request-id", "r500"),
            Reply::raw(503, b"upstream down"),
            Reply::json(200, task(3, "ACCEPTED", &url)),
        ],
    )
    .on(
        "GET /v1/image/edit/async/3",
        vec![
            Reply::raw(502, b""),
            Reply::json(200, task(3, "PROCESSING", &url)),
        ],
    );
    let client = client(&format!("{root}/v1"));
    let err = client.submit_once(&edit_body()).await.unwrap_err();
    assert_eq!(
        (err.class(), err.code().as_str(), err.request_id()),
        (ErrorClass::Transient, "server-error", Some("r500"))
    );
    assert_eq!(mock.seen_on("POST", "/v1/image/edit/async").len(), 1);
    let err = client.submit_once(&edit_body()).await.unwrap_err();
    assert_eq!(
        (err.class(), err.code().as_str()),
        (ErrorClass::Transient, "server-error")
    );
    assert_eq!(mock.seen_on("POST", "/v1/image/edit/async").len(), 2);
    assert_eq!(client.submit_once(&edit_body()).await.unwrap().task_id, 3);
    assert_eq!(mock.seen_on("POST", "/v1/image/edit/async").len(), 3);

    let err = client.poll_once(&url, 3).await.unwrap_err();
    assert_eq!(
        (err.class(), err.code().as_str()),
        (ErrorClass::Transient, "server-error")
    );
    assert_eq!(mock.seen_on("GET", "/v1/image/edit/async/3").len(), 1);
    client.poll_once(&url, 3).await.unwrap();
    assert_eq!(mock.seen_on("GET", "/v1/image/edit/async/3").len(), 2);
    assert_eq!(client.stats().retries, 0);
}

/// A CDN's 520 ("unknown error") and 524 ("a timeout occurred") come after the origin took
/// the request: a submit answered so may have made a task, in doubt like a 502/504 (it was
/// sent again as if nothing had reached Claid: two tasks, 0 counted in doubt). Its 521/522
/// (the origin refused or never answered the connection) reached nothing.
#[tokio::test]
async fn a_cdn_timeout_to_a_submit_is_ambiguous_but_a_refused_origin_is_not() {
    let mock = Mock::default();
    let root = mock.start().await;
    mock.on(
        SUBMIT,
        vec![
            Reply::raw(524, b"A timeout occurred"),
            Reply::raw(520, b""),
            Reply::raw(522, b"Connection timed out"),
        ],
    );
    let client = client(&format!("{root}/v1"));
    for want in [
        ErrorClass::Ambiguous,
        ErrorClass::Ambiguous,
        ErrorClass::Transient,
    ] {
        let err = client.submit_once(&edit_body()).await.unwrap_err();
        assert_eq!(err.class(), want, "{err:?}");
    }
}

/// A result host answering 200 with an empty body (a cache that had not the file yet) sent
/// no image: a body cut short, fetched again (it failed the billed image as result-mismatch).
#[tokio::test]
async fn an_empty_download_is_a_body_cut_short() {
    let mock = Mock::default();
    let root = mock.start().await;
    mock.on("GET /files/x.png", vec![Reply::raw(200, b"")]);
    let client = client(&format!("{root}/v1"));
    let err = client
        .download_once(&format!("{root}/files/x.png"))
        .await
        .unwrap_err();
    assert_eq!(
        (err.class(), err.code().as_str()),
        (ErrorClass::Transient, "download-truncated"),
        "{err:?}"
    );
}

#[tokio::test]
async fn account_errors_are_systemic_and_not_retried() {
    for (status, code) in [
        (401, "claid-unauthorized"),
        (402, "claid-out-of-credits"),
        (403, "claid-forbidden"),
    ] {
        let mock = Mock::default();
        let root = mock.start().await;
        let reply = Reply::json(
            status,
            json!({"error_code":"111","error_type":"auth","error_message":"Authorization is required."}),
        )
        .header("x-request-id", "req-auth");
        mock.on(SUBMIT, vec![reply.clone()])
            .on("GET /v1/image/edit/async/0", vec![reply]);
        let client = client(&format!("{root}/v1"));
        let err = client.submit_once(&edit_body()).await.unwrap_err();
        assert_eq!(err.class(), ErrorClass::Systemic, "{status}");
        assert_eq!(err.code(), code);
        assert_eq!(err.request_id(), Some("req-auth"));
        assert_eq!(err.claid_message(), Some("Authorization is required."));
        assert!(!err.to_string().contains(KEY));
        assert_eq!(mock.seen().len(), 1, "{status} must not be retried");

        let probe = client.probe().await.unwrap_err();
        assert_eq!(probe.class(), ErrorClass::Systemic);
    }
}

#[tokio::test]
async fn job_errors_carry_claid_code_message_and_details() {
    let mock = Mock::default();
    let root = mock.start().await;
    mock.on(
        SUBMIT,
        vec![
            Reply::json(
                422,
                json!({"error_code":"9000","error_type":"validation",
                "error_message":"operations.resizing.width: ensure this value is greater than 0.",
                "error_details":{"operations.resizing.width":["ensure this value is greater than 0"]}}),
            )
            .header("x-request-id", "req-422"),
        ],
    )
    .on(
        "GET /v1/image/edit/async/99",
        vec![Reply::json(
            404,
            json!({"error_code":"404","error_type":"general","error_message":"Batch image edit pipeline not found."}),
        )],
    )
    .on(
        "GET /v1/image/edit/async/abc",
        vec![Reply::json(
            422,
            json!({"detail":[{"loc":["path","task_id"],"msg":"value is not a valid integer","type":"type_error.integer"}]}),
        )],
    );
    let client = client(&format!("{root}/v1"));
    let err = client.submit_once(&edit_body()).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Job);
    assert_eq!(err.code(), "claid-invalid-request");
    assert_eq!(err.request_id(), Some("req-422"));
    match &err {
        claid_hotfolder::claid::ClaidError::Rejected {
            status,
            error_code,
            error_details,
            ..
        } => {
            assert_eq!(*status, 422);
            assert_eq!(error_code, "9000");
            assert_eq!(
                error_details["operations.resizing.width"],
                vec!["ensure this value is greater than 0".to_owned()]
            );
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(mock.seen().len(), 1);

    let gone = client
        .poll_once(&format!("{root}/v1/image/edit/async/99"), 99)
        .await
        .unwrap_err();
    assert_eq!(gone.class(), ErrorClass::Job);
    assert_eq!(gone.code(), "claid-not-found");
    assert_eq!(
        gone.claid_message(),
        Some("Batch image edit pipeline not found.")
    );

    let fastapi = client
        .poll_once(&format!("{root}/v1/image/edit/async/abc"), 0)
        .await
        .unwrap_err();
    assert_eq!(fastapi.class(), ErrorClass::Job);
    assert!(
        fastapi
            .claid_message()
            .unwrap()
            .contains("path.task_id: value is not a valid integer")
    );
    // A 404 on the probe's non-existent task means "the key works".
    client.probe().await.unwrap();
}

#[tokio::test]
async fn dropped_connection_after_submit_is_ambiguous_and_sent_once() {
    let (root, count) = raw_server(b"").await;
    let client = client(&format!("{root}/v1"));
    let err = client.submit_once(&edit_body()).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Ambiguous, "{err:?}");
    assert_eq!(err.code(), "connection-lost");
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert_eq!(client.stats().retries, 0);
}

#[tokio::test]
async fn submit_timeout_after_send_is_ambiguous_and_sent_once() {
    let mock = Mock::default();
    let root = mock.start().await;
    let url = format!("{root}/v1/image/edit/async/1");
    mock.on(
        SUBMIT,
        vec![Reply::json(200, task(1, "ACCEPTED", &url)).delay(Duration::from_secs(3))],
    );
    let client = Client::new(ClientConfig {
        request_timeout: Duration::from_millis(300),
        upload_timeout: Duration::from_millis(300),
        ..config(&format!("{root}/v1"))
    })
    .unwrap();
    let err = client.submit_once(&edit_body()).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Ambiguous);
    assert_eq!(err.code(), "timeout");
    assert_eq!(mock.seen().len(), 1);
}

#[tokio::test]
async fn unreadable_200_is_ambiguous_for_submit_and_transient_for_poll() {
    let mock = Mock::default();
    let root = mock.start().await;
    mock.on(SUBMIT, vec![Reply::raw(200, b"<html>oops</html>")])
        .on(
            "GET /v1/image/edit/async/5",
            vec![Reply::raw(200, b"{\"data\": 1}").header("x-request-id", "bad")],
        );
    let client = client(&format!("{root}/v1"));
    let err = client.submit_once(&edit_body()).await.unwrap_err();
    // Claid accepted it: in doubt, and held (sending it again could bill it twice).
    assert_eq!(err.class(), ErrorClass::Ambiguous);
    assert!(err.accepted_unread());
    assert_eq!(err.code(), "bad-response");
    assert_eq!(mock.seen_on("POST", "/v1/image/edit/async").len(), 1);

    let err = client
        .poll_once(&format!("{root}/v1/image/edit/async/5"), 5)
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient);
    assert_eq!(err.code(), "bad-response");
    assert_eq!(err.request_id(), Some("bad"));
    assert_eq!(mock.seen_on("GET", "/v1/image/edit/async/5").len(), 1);
}

/// A submit answered `200 OK` whose body then breaks off was accepted by Claid (and may be
/// billed): it is the 2xx that cannot be read, held in doubt, not a lost answer (resent, it
/// was billed up to five times). A poll's broken body stays a transport fault, asked again.
#[tokio::test]
async fn a_submit_answered_200_whose_body_breaks_off_is_accepted_unread() {
    let (root, count) = raw_server(
        b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\nx-request-id: cut\r\n\r\n{\"data\": {\"id\": 5,",
    )
    .await;
    let client = client(&format!("{root}/v1"));
    let err = client.submit_once(&edit_body()).await.unwrap_err();
    assert!(err.accepted_unread(), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Ambiguous);
    assert_eq!(err.code(), "bad-response");
    assert_eq!(err.request_id(), Some("cut"));
    assert_eq!(count.load(Ordering::SeqCst), 1);
    let err = client
        .poll_once(&format!("{root}/v1/image/edit/async/5"), 5)
        .await
        .unwrap_err();
    assert!(!err.accepted_unread(), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Transient, "{err:?}");
}

/// A submit answered `303 See Other` was processed (the task exists and may be billed): held
/// in doubt like a 2xx that cannot be read, never sent again (taken for "the API moved", the
/// job stayed queued and the next run submitted it again: billed twice, counted nowhere). A
/// 307 stays a redirect of the API, which pauses.
#[tokio::test]
async fn a_submit_answered_303_see_other_is_accepted_unread() {
    let (root, count) = raw_server(
        b"HTTP/1.1 303 See Other\r\nLocation: /v1/image/edit/async/1001\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    let err = client(&format!("{root}/v1"))
        .submit_once(&edit_body())
        .await
        .unwrap_err();
    assert!(err.accepted_unread(), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Ambiguous);
    assert!(err.to_string().contains("303 See Other"), "{err}");
    assert_eq!(count.load(Ordering::SeqCst), 1);
    let (root, _) = raw_server(
        b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    let err = client(&format!("{root}/v1"))
        .submit_once(&edit_body())
        .await
        .unwrap_err();
    assert!(!err.accepted_unread(), "{err:?}");
    assert!(err.to_string().contains("a redirect to"), "{err}");
}

/// A result body that ends before its image does is a cut on the wire when the connection's
/// close ended it (no length, not chunked: waited out as the host's fault); one whose framing
/// says it came whole (chunked) is the result's own, as one that had all its announced length.
#[tokio::test]
async fn a_result_ended_by_the_close_is_a_cut_and_a_whole_chunked_one_is_not() {
    let png = crate::support::png(64, 48);
    let half = &png[..png.len() / 2];
    let close = [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".as_slice(),
        half,
    ]
    .concat();
    let chunked = [
        format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            half.len()
        )
        .as_bytes(),
        half,
        b"\r\n0\r\n\r\n",
    ]
    .concat();
    for (answer, by_close) in [(close, true), (chunked, false)] {
        let (root, _) = raw_server(Box::leak(answer.into_boxed_slice())).await;
        let err = client(&format!("{root}/v1"))
            .download_once(&format!("{root}/files/a.png"))
            .await
            .unwrap_err();
        match err {
            claid_hotfolder::claid::ClaidError::Truncated {
                expected,
                image_end,
                received,
                ..
            } => {
                assert!(image_end.is_some(), "the image is cut");
                assert_eq!(received, half.len() as u64);
                assert_eq!(expected.is_none(), by_close, "{expected:?}");
            }
            other => panic!("{other:?}"),
        }
    }
}

/// A result URL that redirects to itself for ever is a loop, told as such: no outage of the
/// result's host (it was waited out as one, 12 requests a second, and told "unreachable").
#[tokio::test]
async fn a_result_url_redirecting_in_a_loop_is_told_as_a_loop_not_an_outage() {
    let (root, count) =
        raw_server(b"HTTP/1.1 302 Found\r\nLocation: /files/a.png\r\nContent-Length: 0\r\n\r\n")
            .await;
    let client = client(&format!("{root}/v1"));
    let err = client
        .download_once(&format!("{root}/files/a.png"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("redirects in a loop"), "{err}");
    assert!(!err.is_unreachable(), "{err:?}");
    assert_eq!(err.code(), "download-failed");
    assert!(count.load(Ordering::SeqCst) > 1);
}

/// Nothing listens: the error is transient, says it reached nobody, and names the host, the
/// port and the OS cause.
#[tokio::test]
async fn connect_error_names_host_port_and_os_cause() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = client(&format!("http://{addr}/v1"));
    let err = client.submit_once(&edit_body()).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "{err:?}");
    assert_eq!(err.code(), "connect-failed");
    assert!(err.is_unreachable());
    assert_eq!(
        err.to_string(),
        format!("submit: connect to {addr}: ECONNREFUSED: connection refused")
    );
    assert_eq!(client.stats().transport_errors[&Endpoint::Submit], 1);
    assert_eq!(client.stats().retries, 0);
}

#[tokio::test]
async fn download_returns_the_bytes_without_the_api_key_and_without_the_limiter() {
    let mock = Mock::default();
    let root = mock.start().await;
    let image: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    mock.on("GET /files/a.webp", vec![Reply::raw(200, &image)])
        .on(
            "GET /files/b.webp",
            vec![Reply::raw(200, &image).streamed()],
        );
    let client = Client::new(ClientConfig {
        requests_per_second: NonZeroU32::new(1).unwrap(),
        ..config(&format!("{root}/v1"))
    })
    .unwrap();
    for name in ["a", "b", "a", "b"] {
        let bytes = client
            .download_once(&format!("{root}/files/{name}.webp?sig=abc"))
            .await
            .unwrap();
        assert_eq!(bytes.as_ref(), image.as_slice());
    }
    for seen in mock.seen() {
        assert!(!seen.headers.contains_key("authorization"));
    }
    let stats = client.stats();
    assert_eq!(stats.limiter_waits, 0, "downloads are not rate limited");
    assert_eq!(stats.responses[&(Endpoint::Download, 200)], 4);
}

/// A chunked body (no announced length) that breaks off is a truncated download too, not a
/// lost connection.
#[tokio::test]
async fn download_of_a_chunked_body_that_breaks_off_is_truncated() {
    let (root, _) = raw_server(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nx-request-id: t2\r\n\r\n5\r\n01234\r\n",
    )
    .await;
    let client = client(&format!("{root}/v1"));
    let err = client
        .download_once(&format!("{root}/files/x.png"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "download-truncated", "{err:?}");
    assert_eq!(err.class(), ErrorClass::Transient, "{err:?}");
    assert!(err.to_string().contains("truncated at 5 bytes"), "{err}");
}

/// A large result from a slow host takes longer than `request_timeout` in all, while bytes
/// keep coming: it is downloaded whole (every attempt was cut at the timeout, and a billed
/// result was lost). The timeout bounds a silence, not the whole body.
#[tokio::test]
async fn a_download_longer_than_the_request_timeout_while_bytes_keep_coming_completes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((mut socket, _)) = listener.accept().await else {
            return;
        };
        let mut chunk = [0u8; 4096];
        let _ = socket.read(&mut chunk).await;
        let _ = socket
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
            .await;
        // 10 bytes, one every 300 ms: 3 s in all, under 1 s of silence each time.
        for byte in b"0123456789" {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if socket.write_all(&[*byte]).await.is_err() {
                return;
            }
            let _ = socket.flush().await;
        }
    });
    let root = format!("http://{addr}");
    let mut cfg = config(&format!("{root}/v1"));
    cfg.request_timeout = Duration::from_secs(1);
    let client = Client::new(cfg).unwrap();
    let bytes = client
        .download_once(&format!("{root}/files/slow.bin"))
        .await
        .expect("the whole body");
    assert_eq!(&bytes[..], b"0123456789");
}

#[tokio::test]
async fn download_truncated_body_is_a_transient_error() {
    let (root, count) =
        raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nx-request-id: t1\r\n\r\n0123456789")
            .await;
    let client = client(&format!("{root}/v1"));
    let err = client
        .download_once(&format!("{root}/files/x.png"))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "{err:?}");
    assert_eq!(err.code(), "download-truncated");
    assert_eq!(err.request_id(), Some("t1"));
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn download_over_the_cap_is_refused() {
    let mock = Mock::default();
    let root = mock.start().await;
    let big = vec![7u8; 4096];
    mock.on("GET /files/declared.png", vec![Reply::raw(200, &big)])
        .on(
            "GET /files/streamed.png",
            vec![Reply::raw(200, &big).streamed()],
        )
        .on("GET /files/fits.png", vec![Reply::raw(200, &big[..1000])]);
    let client = Client::new(ClientConfig {
        max_download_bytes: 1000,
        ..config(&format!("{root}/v1"))
    })
    .unwrap();
    for name in ["declared", "streamed"] {
        let err = client
            .download_once(&format!("{root}/files/{name}.png"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "download-too-large", "{name}");
        assert_eq!(err.class(), ErrorClass::Job);
    }
    assert_eq!(
        client
            .download_once(&format!("{root}/files/fits.png"))
            .await
            .unwrap()
            .len(),
        1000
    );
    // Not retried: two attempts for the two refused files, one for the good one.
    assert_eq!(mock.seen().len(), 3);
}

#[tokio::test]
async fn download_of_a_non_http_url_is_refused() {
    let client = client("http://127.0.0.1:9/v1");
    for url in [
        "file:///etc/passwd",
        "ftp://example.com/a.png",
        "storage://demo/a.png",
        "data:text/plain,hi",
        "/relative/path.png",
    ] {
        let err = client.download_once(url).await.unwrap_err();
        assert_eq!(err.code(), "bad-url", "{url}");
        assert_eq!(err.class(), ErrorClass::Job);
    }
    assert!(client.stats().responses.is_empty());
}

/// A result URL that answers 403/404 is `result-expired`, asked again on the download's
/// budget (one not propagated yet answers so too) before the job fails with that code.
#[tokio::test]
async fn expired_result_download_is_result_expired_and_asked_again() {
    let mock = Mock::default();
    let root = mock.start().await;
    mock.on("GET /files/old.png", vec![Reply::raw(403, b"expired")]);
    let client = client(&format!("{root}/v1"));
    let err = client
        .download_once(&format!("{root}/files/old.png"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "result-expired");
    assert_eq!(err.class(), ErrorClass::Transient);
    assert_eq!(mock.seen().len(), 1);
}

#[tokio::test]
async fn upload_sends_multipart_file_and_json_data() {
    let mock = Mock::default();
    let root = mock.start().await;
    let object = |w: u32| json!({"ext":"png","mps":0.01,"mime":"image/png","format":"png","width":w,"height":w});
    mock.on(
        "POST /v1/image/edit/upload",
        vec![
            Reply::json(
                200,
                json!({"data": {"input": object(100), "output": object(50)}}),
            )
            .header("x-request-id", "up-1"),
        ],
    );
    let client = client(&format!("{root}/v1"));
    let data = json!({"operations": {"resizing": {"width": 50}}, "output": {"format": "png"}});
    let file = b"\x89PNG fake image bytes".to_vec();
    let uploaded = client
        .upload_once("shoe", Bytes::from(file.clone()), &data)
        .await
        .unwrap();
    assert_eq!(uploaded.response.output.width, 50);
    assert_eq!(uploaded.request_id.as_deref(), Some("up-1"));

    let seen = mock.seen_on("POST", "/v1/image/edit/upload");
    assert_eq!(seen.len(), 1);
    let content_type = seen[0].headers["content-type"].to_str().unwrap();
    assert!(content_type.starts_with("multipart/form-data; boundary="));
    assert_eq!(
        seen[0].headers["authorization"],
        format!("Bearer {KEY}").as_str()
    );
    let body = String::from_utf8_lossy(&seen[0].body);
    assert!(
        body.contains("Content-Disposition: form-data; name=\"file\"; filename=\"shoe\""),
        "{body}"
    );
    assert!(body.contains("\u{FFFD}PNG fake image bytes"));
    // The file part says its type (none would read as text/plain).
    let file_part = body.split("name=\"file\"").nth(1).expect("a file part");
    let file_head = file_part.split("\r\n\r\n").next().unwrap_or_default();
    assert!(
        file_head.contains("Content-Type: application/octet-stream"),
        "{body}"
    );
    let data_part = body.split("name=\"data\"").nth(1).expect("a data part");
    assert!(
        data_part.contains("Content-Type: application/json"),
        "{body}"
    );
    assert!(data_part.contains(&data.to_string()));
}

/// A local file's name with a newline, quotes and a backslash cannot break the multipart
/// headers: they are percent-encoded in `filename=`, and the part is still read as the file.
#[tokio::test]
async fn upload_file_names_are_percent_encoded_never_raw() {
    let mock = Mock::default();
    let root = mock.start().await;
    let object =
        json!({"ext":"png","mps":0.01,"mime":"image/png","format":"png","width":1,"height":1});
    mock.on(
        "POST /v1/image/edit/upload",
        vec![Reply::json(
            200,
            json!({"data": {"input": object, "output": object}}),
        )],
    );
    let client = client(&format!("{root}/v1"));
    let data = json!({"operations": {}});
    client
        .upload_once(
            "a\nContent-Type: text/evil\r\n\"q\"\\b.png",
            Bytes::from_static(b"bytes"),
            &data,
        )
        .await
        .unwrap();
    let seen = mock.seen_on("POST", "/v1/image/edit/upload");
    assert_eq!(seen.len(), 1);
    let body = String::from_utf8_lossy(&seen[0].body);
    assert!(
        body.contains(
            "name=\"file\"; filename=\"a%0AContent-Type: text/evil%0D%0A%22q%22%5Cb.png\"\r\n"
        ),
        "{body}"
    );
    assert!(!body.contains("text/evil\r\n"), "{body}");
}

#[tokio::test]
async fn the_api_key_never_shows_in_debug_output() {
    let cfg = config("http://127.0.0.1:9/v1");
    let client = Client::new(cfg.clone()).unwrap();
    for text in [
        format!("{cfg:?}"),
        format!("{client:?}"),
        format!("{client:#?}"),
    ] {
        assert!(!text.contains(KEY), "{text}");
        assert!(!text.contains("SECRET"), "{text}");
        assert!(text.contains("redacted"), "{text}");
    }
    let err = client.probe().await.unwrap_err();
    assert!(!format!("{err:?}").contains("SECRET"));
}

#[tokio::test]
async fn bad_config_is_refused() {
    for base in ["", "not a url", "ftp://x/v1"] {
        let err = Client::new(config(base)).unwrap_err();
        assert_eq!(err.class(), ErrorClass::Systemic, "{base}");
        assert_eq!(err.code(), "client-config");
    }
    let err = Client::new(ClientConfig {
        api_key: "bad\nkey".into(),
        ..config("http://127.0.0.1:9/v1")
    })
    .unwrap_err();
    assert_eq!(err.code(), "client-config");
    assert!(!err.to_string().contains("bad\nkey"));
    let err = Client::new(ClientConfig {
        request_timeout: Duration::ZERO,
        upload_timeout: Duration::ZERO,
        ..config("http://127.0.0.1:9/v1")
    })
    .unwrap_err();
    assert_eq!(err.code(), "client-config");
}

#[tokio::test]
async fn the_limiter_keeps_a_burst_at_or_below_the_configured_rate() {
    let mock = Mock::default();
    let root = mock.start().await;
    let url = format!("{root}/v1/image/edit/async/1");
    mock.on(SUBMIT, vec![Reply::json(200, task(1, "ACCEPTED", &url))])
        .on(
            "GET /v1/image/edit/async/1",
            vec![Reply::json(200, task(1, "PROCESSING", &url))],
        );
    let rps = 4;
    let client = Client::new(ClientConfig {
        requests_per_second: NonZeroU32::new(rps).unwrap(),
        ..config(&format!("{root}/v1"))
    })
    .unwrap();
    let started = Instant::now();
    let calls = 12;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..calls {
        let client = client.clone();
        let url = url.clone();
        tasks.spawn(async move {
            if i % 2 == 0 {
                client.submit_once(&edit_body()).await.map(|_| ())
            } else {
                client.poll_once(&url, 1).await.map(|_| ())
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
    let seen = mock.seen();
    assert_eq!(seen.len(), calls);
    // No one-second window holds more than rps (+1 for a call exactly on the edge, +1 margin
    // for scheduling jitter on a loaded machine).
    for first in &seen {
        let in_window = seen
            .iter()
            .filter(|s| s.at >= first.at && s.at - first.at < Duration::from_secs(1))
            .count();
        assert!(
            in_window <= rps as usize + 1,
            "{in_window} calls in one second"
        );
    }
    // 12 calls at 4/s go in three bursts of 4, the last 2.1 s after the first; every call
    // past the first burst waited for its slot.
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(client.stats().limiter_waits >= (calls - rps as usize) as u64);
}

#[tokio::test]
async fn an_empty_key_sends_no_authorization_header() {
    let mock = Mock::default();
    let root = mock.start().await;
    let client = Client::new(ClientConfig {
        api_key: "  ".into(),
        ..config(&format!("{root}/v1"))
    })
    .unwrap();
    client.probe().await.unwrap();
    let seen = mock.seen_on("GET", "/v1/image/edit/async/0");
    assert_eq!(seen.len(), 1);
    assert!(!seen[0].headers.contains_key("authorization"));
}

/// Claid's schema leaves `result_url`, `errors`, `result` and `created_at` optional, and a
/// server built from it may send them as `null`: a submit or poll answer with nulls is read
/// (the task is not taken for unanswered, resubmitted and billed again).
#[tokio::test]
async fn optional_fields_sent_as_null_read_as_absent() {
    let mock = Mock::default();
    let root = mock.start().await;
    let nulls = |status: &str| {
        json!({"data": {"id": 3, "status": status, "result_url": null, "created_at": null,
            "request": null, "errors": null, "result": null}})
    };
    mock.on(SUBMIT, vec![Reply::json(200, nulls("ACCEPTED"))])
        .on(
            "GET /v1/image/edit/async/3",
            vec![Reply::json(200, nulls("PROCESSING"))],
        )
        .on(
            "POST /v1/image/edit/batch",
            vec![Reply::json(
                200,
                json!({"data": {"id": 4, "status": "ACCEPTED", "result_url": null,
                    "created_at": null, "request": null, "errors": null, "results": null}}),
            )],
        );
    let client = client(&format!("{root}/v1"));
    let accepted = client.submit_once(&edit_body()).await.unwrap();
    assert_eq!(accepted.task_id, 3);
    let url = client.poll_url(
        claid_hotfolder::claid::TaskKind::Async,
        3,
        &accepted.result_url,
    );
    let task = client.poll_once(&url, 3).await.unwrap().task;
    assert!(task.errors.is_empty() && task.result.output_object.is_none());
    let request: claid_hotfolder::claid::wire::BatchEditRequest =
        serde_json::from_value(json!({"input": ["https://example.com/a.png"], "operations": {}}))
            .unwrap();
    assert_eq!(
        client.submit_batch_once(&request).await.unwrap().batch_id,
        4
    );
    assert_eq!(mock.seen_on("POST", "/v1/image/edit/async").len(), 1);
}

/// An error body whose `error_code` is a number and whose `error_details` (a free-form object
/// in Claid's schema) holds plain strings is still read: the job's reason is Claid's message.
#[tokio::test]
async fn error_bodies_with_free_form_details_keep_their_message_and_code() {
    let mock = Mock::default();
    let root = mock.start().await;
    mock.on(
        SUBMIT,
        vec![Reply::json(
            422,
            json!({"error_code": 9000, "error_type": "validation",
                "error_message": "Input image could not be fetched.",
                "error_details": {"input": "could not fetch image", "n": 3}}),
        )],
    );
    let client = client(&format!("{root}/v1"));
    let err = client.submit_once(&edit_body()).await.unwrap_err();
    assert_eq!(
        err.claid_message(),
        Some("Input image could not be fetched.")
    );
    match &err {
        claid_hotfolder::claid::ClaidError::Rejected {
            error_code,
            error_details,
            ..
        } => {
            assert_eq!(error_code, "9000");
            assert_eq!(error_details["input"], ["could not fetch image"]);
            assert_eq!(error_details["n"], ["3"]);
        }
        other => panic!("not read as Claid's refusal: {other:?}"),
    }
}

/// A 503 that says when to come back (`Retry-After`) closes the limiter's gate for everyone
/// until then, as a 429 does: the next call is not sent earlier.
#[tokio::test]
async fn a_503_with_retry_after_holds_every_next_call_until_then() {
    let mock = Mock::default();
    let root = mock.start().await;
    let url = format!("{root}/v1/image/edit/async/1");
    mock.on(
        SUBMIT,
        vec![
            Reply::raw(503, b"maintenance").header("retry-after", "2"),
            Reply::json(200, task(1, "ACCEPTED", &url)),
        ],
    );
    let client = client(&format!("{root}/v1"));
    let err = client.submit_once(&edit_body()).await.unwrap_err();
    assert_eq!(err.code(), "server-error");
    client.submit_once(&edit_body()).await.unwrap();
    let seen = mock.seen_on("POST", "/v1/image/edit/async");
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at - seen[0].at;
    assert!(gap >= Duration::from_millis(1900), "waited only {gap:?}");
}
