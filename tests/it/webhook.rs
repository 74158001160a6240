//! The webhook receiver (issue 12 §2, the HTTP side): a real listener on 127.0.0.1:0, fed by
//! the emulator's webhook sender (genuine, forged and duplicated deliveries, hex or base64
//! signatures, bare or wrapped bodies) and by hand-made requests (unsigned, unparseable,
//! oversized, idle, too many at once).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use claid_hotfolder::claid::wire::{TaskStatus, TaskUpdate};
use claid_hotfolder::emulator::{self, Handle, Latency, Scenario, WebhookBody, WebhookDigest};
use claid_hotfolder::webhook::{
    self, MAX_BODY, MAX_CONNECTIONS, SINK_WAIT, Secret, WebhookCounters, WebhookError, WebhookStats,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::support::wait_until;

const SECRET: &str = "whsec-it-0123456789abcdef";
const KEY: &str = "sk-test-webhooks";
const DEADLINE: Duration = Duration::from_secs(30);

/// A running receiver and the far end of its sink.
struct Hook {
    addr: SocketAddr,
    url: String,
    updates: mpsc::Receiver<TaskUpdate>,
    counters: Arc<WebhookCounters>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), WebhookError>>,
}

impl Hook {
    /// Serves on 127.0.0.1:0 with a sink of `capacity` updates.
    async fn start(capacity: usize) -> Hook {
        let listener = webhook::bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (sink, updates) = mpsc::channel(capacity);
        let counters = Arc::new(WebhookCounters::default());
        let cancel = CancellationToken::new();
        let secret = Secret::new(SECRET).expect("non-empty");
        let task = tokio::spawn(webhook::serve(
            listener,
            secret,
            sink,
            None,
            Arc::clone(&counters),
            cancel.clone(),
        ));
        Hook {
            addr,
            url: format!("http://{addr}{}", webhook::PATH),
            updates,
            counters,
            cancel,
            task,
        }
    }

    /// The next `n` updates the sink got.
    async fn next(&mut self, n: usize) -> Vec<TaskUpdate> {
        let mut got = Vec::with_capacity(n);
        for i in 0..n {
            let update = tokio::time::timeout(DEADLINE, self.updates.recv())
                .await
                .unwrap_or_else(|_| panic!("update {i} of {n} did not arrive"))
                .expect("sink open");
            got.push(update);
        }
        got
    }

    fn stats(&self) -> WebhookStats {
        self.counters.snapshot()
    }

    async fn stop(self) {
        self.cancel.cancel();
        let res = tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the receiver stops")
            .expect("receiver task");
        assert!(res.is_ok(), "{res:?}");
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(DEADLINE)
        .build()
        .expect("client")
}

/// POSTs `body` to the receiver with `signature` (if any); returns the status and body.
async fn post(url: &str, body: &[u8], signature: Option<&str>) -> (u16, String) {
    let mut request = http()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(signature) = signature {
        request = request.header("X-Claid-Hmac-SHA256", signature);
    }
    let response = request.send().await.expect("answered");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

fn sign(body: &[u8]) -> String {
    webhook::sign_hex(&Secret::new(SECRET).expect("non-empty"), body)
}

fn quick() -> Scenario {
    Scenario::default()
        .latency(Latency::Fixed(Duration::from_millis(10)))
        .seed(12)
}

fn edit_body(input: Value) -> Value {
    json!({"input": input, "operations": {"resizing": {"width": 16, "height": 8, "fit": "crop"}}, "output": {"format": "png"}})
}

/// Submits to the emulator (`async` or `batch`); returns the task or batch id.
async fn submit(h: &Handle, endpoint: &str, input: Value) -> u64 {
    let response = http()
        .post(format!("{}/image/edit/{endpoint}", h.base_url()))
        .bearer_auth(KEY)
        .json(&edit_body(input))
        .send()
        .await
        .expect("submitted");
    assert_eq!(response.status().as_u16(), 200);
    let answer: Value = response.json().await.expect("json");
    answer["data"]["id"].as_u64().expect("id")
}

async fn wait_stats(h: &Handle, what: &str, check: impl Fn(&emulator::Stats) -> bool) {
    wait_until(what, DEADLINE, || check(&h.stats())).await;
}

/// Issue 12 §2: the emulator's genuine deliveries, signed in hex or base64, bare or wrapped,
/// for async tasks and a batch, reach the sink verified and parsed, each answered 2xx.
#[tokio::test]
async fn genuine_deliveries_reach_the_sink_in_every_encoding_and_shape() {
    for (digest, shape) in [
        (WebhookDigest::Hex, WebhookBody::Bare),
        (WebhookDigest::Base64, WebhookBody::Wrapped),
        (WebhookDigest::Hex, WebhookBody::Wrapped),
        (WebhookDigest::Base64, WebhookBody::Bare),
    ] {
        let mut hook = Hook::start(16).await;
        let h = emulator::spawn(
            quick()
                .webhook_url(&hook.url)
                .webhook_secret(SECRET)
                .webhook_digest(digest)
                .webhook_body(shape),
        )
        .await
        .expect("emulator");
        let mut tasks = Vec::new();
        for i in 0..3 {
            tasks.push(submit(&h, "async", json!(format!("storage://demo/a{i}-8x8.png"))).await);
        }
        let batch = submit(
            &h,
            "batch",
            json!(["storage://demo/b1-8x8.png", "storage://demo/b2-8x8.png"]),
        )
        .await;
        let mut got = hook.next(4).await;
        got.sort_by_key(TaskUpdate::id);
        let mut expected = tasks.clone();
        expected.push(batch);
        expected.sort();
        let ids: Vec<u64> = got.iter().map(TaskUpdate::id).collect();
        assert_eq!(ids, expected, "{digest:?} {shape:?}");
        for update in &got {
            assert_eq!(update.status(), &TaskStatus::Done, "{digest:?} {shape:?}");
            match update {
                TaskUpdate::Batch(done) => {
                    assert_eq!(done.id, batch);
                    assert_eq!(done.results.len(), 2, "{digest:?} {shape:?}");
                }
                TaskUpdate::Async(task) => {
                    assert!(tasks.contains(&task.id));
                    assert!(task.result.output_object.is_some(), "{digest:?} {shape:?}");
                }
            }
        }
        wait_stats(&h, "4 deliveries answered 2xx", |s| s.webhooks_sent == 4).await;
        assert_eq!(h.stats().webhooks_failed, 0);
        let stats = hook.stats();
        assert_eq!(
            (stats.received, stats.verified, stats.delivered),
            (4, 4, 4),
            "{digest:?} {shape:?}: {stats:?}"
        );
        assert_eq!(stats.rejected_signature + stats.rejected_body, 0);
        h.shutdown().await;
        hook.stop().await;
    }
}

/// Forged deliveries (a wrong key, status ERROR) are refused 401 and counted, so the
/// emulator's `webhooks_forged_accepted` stays 0 and only the genuine DONEs reach the sink;
/// so is a delivery without any signature.
#[tokio::test]
async fn forged_and_unsigned_deliveries_are_refused_401_and_counted() {
    let mut hook = Hook::start(16).await;
    let h = emulator::spawn(
        quick()
            .webhook_url(&hook.url)
            .webhook_secret(SECRET)
            .webhook_forged_share(1.0),
    )
    .await
    .expect("emulator");
    let mut tasks = Vec::new();
    for i in 0..3 {
        tasks.push(submit(&h, "async", json!(format!("storage://demo/f{i}-8x8.png"))).await);
    }
    wait_stats(&h, "3 forged and 3 genuine deliveries", |s| {
        s.webhooks_forged == 3 && s.webhooks_sent == 3
    })
    .await;
    assert_eq!(h.stats().webhooks_forged_accepted, 0);
    let mut got = hook.next(3).await;
    got.sort_by_key(TaskUpdate::id);
    assert_eq!(got.iter().map(TaskUpdate::id).collect::<Vec<_>>(), tasks);
    assert!(got.iter().all(|u| u.status() == &TaskStatus::Done));

    let body = br#"{"id": 99, "status": "ERROR", "result_url": "http://x/99"}"#;
    let (status, _) = post(&hook.url, body, None).await;
    assert_eq!(status, 401, "no signature");
    let (status, _) = post(&hook.url, body, Some("sha256=nonsense")).await;
    assert_eq!(status, 401, "an undecodable signature");
    assert!(
        hook.updates.try_recv().is_err(),
        "nothing more reached the sink"
    );
    let stats = hook.stats();
    assert_eq!(stats.rejected_signature, 5, "{stats:?}");
    assert_eq!((stats.verified, stats.delivered), (3, 3), "{stats:?}");
    h.shutdown().await;
    hook.stop().await;
}

/// Duplicates are genuine: both copies are verified and handed over (the pipeline makes them
/// change nothing).
#[tokio::test]
async fn duplicated_deliveries_are_each_verified_and_handed_over() {
    let mut hook = Hook::start(16).await;
    let h = emulator::spawn(
        quick()
            .webhook_url(&hook.url)
            .webhook_secret(SECRET)
            .webhook_digest(WebhookDigest::Base64)
            .webhook_duplicate_share(1.0),
    )
    .await
    .expect("emulator");
    let id = submit(&h, "async", json!("storage://demo/dup-8x8.png")).await;
    let got = hook.next(2).await;
    assert!(
        got.iter()
            .all(|u| u.id() == id && u.status() == &TaskStatus::Done)
    );
    wait_stats(&h, "both copies answered 2xx", |s| {
        s.webhooks_sent == 2 && s.webhooks_duplicated == 1
    })
    .await;
    assert_eq!(hook.stats().verified, 2);
    h.shutdown().await;
    hook.stop().await;
}

/// A verified body that is no task result is answered 400 and counted; a signed body of
/// exactly `MAX_BODY` bytes is read (then refused as no task result), one byte more is 413.
#[tokio::test]
async fn unparseable_bodies_are_400_and_oversized_ones_413() {
    let mut hook = Hook::start(4).await;
    for body in [&b"not json"[..], b"{\"data\": 5}", b"[1, 2]"] {
        let (status, _) = post(&hook.url, body, Some(&sign(body))).await;
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(body));
    }
    let mut largest = vec![b' '; MAX_BODY];
    largest[0] = b'{';
    largest[MAX_BODY - 1] = b'}';
    let (status, _) = post(&hook.url, &largest, Some(&sign(&largest))).await;
    assert_eq!(status, 400, "a body of MAX_BODY bytes is read");

    // One byte over, announced by Content-Length: refused before the body is sent.
    let mut stream = TcpStream::connect(hook.addr).await.expect("connect");
    let signature = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         x-claid-hmac-sha256: {signature}\r\ncontent-length: {}\r\n\r\n",
        webhook::PATH,
        MAX_BODY + 1
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let mut answer = vec![0u8; 64];
    let n = tokio::time::timeout(DEADLINE, stream.read(&mut answer))
        .await
        .expect("answered in time")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    assert!(hook.updates.try_recv().is_err(), "nothing reached the sink");
    let stats = hook.stats();
    assert_eq!(
        (
            stats.verified,
            stats.rejected_body,
            stats.rejected_too_large
        ),
        (4, 4, 1),
        "{stats:?}"
    );
    hook.stop().await;
}

/// A full sink: the update waits `SINK_WAIT`, then is answered 503 (so Claid may deliver it
/// again) and counted; once the sink has room again, deliveries are answered 200.
#[tokio::test]
async fn a_full_sink_is_answered_503_and_a_drained_one_200() {
    let mut hook = Hook::start(1).await;
    let body = |id: u64| {
        json!({"id": id, "status": "DONE", "result_url": format!("http://x/{id}")})
            .to_string()
            .into_bytes()
    };
    let first = body(1);
    let (status, answer) = post(&hook.url, &first, Some(&sign(&first))).await;
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).expect("json");
    assert_eq!(answer["task_id"], 1);
    let second = body(2);
    let (status, _) = post(&hook.url, &second, Some(&sign(&second))).await;
    assert_eq!(status, 503, "the sink stayed full for {SINK_WAIT:?}");
    assert_eq!(hook.stats().sink_busy, 1);
    assert_eq!(hook.next(1).await[0].id(), 1);
    let (status, _) = post(&hook.url, &second, Some(&sign(&second))).await;
    assert_eq!(status, 200);
    assert_eq!(hook.next(1).await[0].id(), 2);
    assert_eq!(hook.stats().delivered, 2);
    hook.stop().await;
}

#[tokio::test]
async fn other_paths_are_404_and_other_methods_405() {
    let hook = Hook::start(1).await;
    let elsewhere = format!("http://{}/webhooks/other", hook.addr);
    let (status, _) = post(&elsewhere, b"{}", Some(&sign(b"{}"))).await;
    assert_eq!(status, 404);
    let response = http().get(&hook.url).send().await.expect("answered");
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    let stats = hook.stats();
    assert_eq!((stats.rejected_route, stats.received), (2, 0), "{stats:?}");
    hook.stop().await;
}

/// Reads until the server closes the connection; the bytes it sent.
async fn read_until_closed(stream: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut answer = Vec::new();
    let res = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer)).await;
    assert!(res.is_ok(), "{what}: still connected after {DEADLINE:?}");
    answer
}

/// A client that connects and sends nothing, or half a request header, is disconnected by
/// the receiver (its header timeout, `webhook::HEADER_TIMEOUT`); the receiver still answers.
#[tokio::test]
async fn idle_connections_are_closed_by_the_header_timeout() {
    let mut hook = Hook::start(4).await;
    let mut silent = TcpStream::connect(hook.addr).await.expect("connect");
    let mut half = TcpStream::connect(hook.addr).await.expect("connect");
    half.write_all(b"POST /webhooks/claid HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("half a header");
    read_until_closed(&mut silent, "silent client").await;
    read_until_closed(&mut half, "half a header").await;
    let body = br#"{"id": 3, "status": "DONE", "result_url": "http://x/3"}"#;
    let (status, _) = post(&hook.url, body, Some(&sign(body))).await;
    assert_eq!(status, 200);
    assert_eq!(hook.next(1).await[0].id(), 3);
    hook.stop().await;
}

/// More idle connections than the cap: each one over it takes the place of the connection
/// idle the longest (closed at once), so a delivery made while they are all still open is
/// answered (it was answered 503 "busy" for as long as idle clients held every place), and
/// every idle connection is closed by the daemon, exhausting nothing.
#[tokio::test]
async fn connections_over_the_cap_take_the_place_of_idle_ones_and_exhaust_nothing() {
    let mut hook = Hook::start(4).await;
    let extra = 8;
    let mut idle = Vec::new();
    for _ in 0..MAX_CONNECTIONS + extra {
        idle.push(TcpStream::connect(hook.addr).await.expect("connect"));
    }
    let body = br#"{"id": 4, "status": "DONE", "result_url": "http://x/4"}"#;
    let (status, _) = post(&hook.url, body, Some(&sign(body))).await;
    assert_eq!(
        status, 200,
        "a delivery is answered while idle clients hold the cap"
    );
    assert_eq!(hook.next(1).await[0].id(), 4);
    let readers: Vec<_> = idle
        .into_iter()
        .map(|mut stream| tokio::spawn(async move { read_until_closed(&mut stream, "idle").await }))
        .collect();
    for reader in readers {
        let answer = reader.await.expect("reader");
        assert!(
            answer.is_empty()
                || answer.starts_with(b"HTTP/1.1 408")
                || answer.starts_with(b"HTTP/1.1 503"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
    hook.stop().await;
}
