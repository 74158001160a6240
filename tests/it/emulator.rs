//! Tests for the emulator: every endpoint on both prefixes (batches included), auth and runtime
//! toggles, the error envelope, uploads, tmp_url expiry, every scenario knob, webhooks to a local
//! receiver, rate-limit windows and the stats, all through a real HTTP client against
//! `emulator::spawn`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use claid_hotfolder::claid::wire::TaskUpdate;
use claid_hotfolder::emulator::{
    self, FaultShares, Handle, Latency, RateLimiter, RateWindow, Scenario, ScenarioArgs,
    WebhookBody, WebhookDigest,
};
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::support::wait_until;

const KEY: &str = "test-key";
const DEADLINE: Duration = Duration::from_secs(15);

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

fn quick() -> Scenario {
    Scenario::default()
        .latency(Latency::Fixed(Duration::from_millis(10)))
        .seed(1)
}

async fn start(scenario: Scenario) -> Handle {
    emulator::spawn(scenario).await.expect("emulator starts")
}

fn root(h: &Handle) -> String {
    format!("http://{}", h.addr())
}

fn edit_body(input: &str) -> Value {
    json!({"input": input, "operations": {"resizing": {"width": 200, "height": 100, "fit": "crop"}}, "output": {"format": "png"}})
}

async fn post_json(url: &str, body: &Value) -> reqwest::Response {
    client()
        .post(url)
        .bearer_auth(KEY)
        .json(body)
        .send()
        .await
        .expect("request sent")
}

async fn get(url: &str) -> reqwest::Response {
    client()
        .get(url)
        .bearer_auth(KEY)
        .send()
        .await
        .expect("request sent")
}

async fn json_of(resp: reqwest::Response) -> Value {
    resp.json().await.expect("json body")
}

/// Submits and returns the accepted `data`.
async fn submit(base: &str, body: &Value) -> Value {
    let resp = post_json(&format!("{base}/image/edit/async"), body).await;
    assert_eq!(resp.status(), StatusCode::OK);
    json_of(resp).await["data"].clone()
}

/// Polls until DONE/ERROR (or the deadline) and returns the last `data`.
async fn wait_terminal(result_url: &str) -> Value {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let resp = get(result_url).await;
        assert_eq!(resp.status(), StatusCode::OK, "poll {result_url}");
        let data = json_of(resp).await["data"].clone();
        if data["status"] == "DONE" || data["status"] == "ERROR" {
            return data;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task never finished: {data}"
        );
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

/// Downloads a tmp_url and checks that the image object describes the bytes.
async fn download_matches(object: &Value) {
    let url = object["tmp_url"].as_str().expect("tmp_url");
    let resp = client().get(url).send().await.expect("download");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().contains_key("x-request-id"));
    let mime = resp.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(mime, object["mime"].as_str().expect("mime"));
    let bytes = resp.bytes().await.expect("bytes");
    let img = image::load_from_memory(&bytes).expect("download decodes");
    assert_eq!(
        u64::from(img.width()),
        object["width"].as_u64().expect("width"),
        "width of {object}"
    );
    assert_eq!(
        u64::from(img.height()),
        object["height"].as_u64().expect("height"),
        "height of {object}"
    );
    let mps = object["mps"].as_f64().expect("mps");
    assert!((mps - f64::from(img.width()) * f64::from(img.height()) / 1e6).abs() < 1e-6);
}

fn assert_image_object(o: &Value) {
    for key in ["ext", "mime", "format"] {
        assert!(o[key].is_string(), "{key} in {o}");
    }
    for key in ["mps", "width", "height"] {
        assert!(o[key].is_number(), "{key} in {o}");
    }
}

/// Asserts the Claid error envelope and returns it.
async fn envelope(resp: reqwest::Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(resp.status(), status);
    assert!(resp.headers().contains_key("x-request-id"));
    let body = json_of(resp).await;
    let env = if status == StatusCode::TOO_MANY_REQUESTS {
        body["detail"].clone()
    } else {
        body.clone()
    };
    assert_eq!(env["error_code"], code, "{body}");
    assert!(env["error_type"].is_string(), "{body}");
    assert!(
        env["error_message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    env
}

fn png_bytes(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb([10, 200, 30]));
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .expect("encode");
    out
}

#[tokio::test]
async fn async_submit_poll_download_on_both_prefixes() {
    let h = start(quick()).await;
    for prefix in ["/v1", "/v1-beta1"] {
        let base = format!("{}{prefix}", root(&h));
        let body = edit_body("storage://demo/shoes/sku-1-640x480.png");
        let accepted = submit(&base, &body).await;
        assert_eq!(accepted["status"], "ACCEPTED");
        assert_eq!(accepted["request"], body);
        assert!(
            accepted["created_at"]
                .as_str()
                .is_some_and(|t| t.contains('T'))
        );
        let id = accepted["id"].as_u64().expect("integer id");
        let url = accepted["result_url"].as_str().expect("result_url");
        assert_eq!(url, format!("{base}/image/edit/async/{id}"));
        let done = wait_terminal(url).await;
        assert_eq!(done["status"], "DONE", "{done}");
        assert_eq!(done["id"], id);
        assert_eq!(done["errors"], json!([]));
        let input = &done["result"]["input_object"];
        let output = &done["result"]["output_object"];
        assert_image_object(input);
        assert_image_object(output);
        assert_eq!(
            (input["width"].as_u64(), input["height"].as_u64()),
            (Some(640), Some(480))
        );
        download_matches(output).await;
    }
    h.shutdown().await;
}

#[tokio::test]
async fn sync_edit_on_both_prefixes() {
    let h = start(quick()).await;
    for prefix in ["/v1", "/v1-beta1"] {
        let resp = post_json(
            &format!("{}{prefix}/image/edit", root(&h)),
            &edit_body("storage://demo/a-300x200.jpg"),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.headers().contains_key("x-request-id"));
        let data = json_of(resp).await["data"].clone();
        assert_image_object(&data["input"]);
        assert_eq!(
            (
                data["input"]["width"].as_u64(),
                data["input"]["height"].as_u64()
            ),
            (Some(300), Some(200))
        );
        download_matches(&data["output"]).await;
    }
    assert_eq!(h.stats().sync_edits, 2);
}

fn upload_form(file: Option<Vec<u8>>, data: Option<&str>) -> reqwest::multipart::Form {
    let mut form = reqwest::multipart::Form::new();
    if let Some(bytes) = file {
        form = form.part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name("product"),
        );
    }
    if let Some(data) = data {
        form = form.part(
            "data",
            reqwest::multipart::Part::text(data.to_owned())
                .mime_str("application/json")
                .expect("mime"),
        );
    }
    form
}

#[tokio::test]
async fn upload_edits_the_file_and_reports_missing_parts() {
    let h = start(quick()).await;
    let data = r#"{"operations":{"resizing":{"width":50}},"output":{"format":"png"}}"#;
    for prefix in ["/v1", "/v1-beta1"] {
        let url = format!("{}{prefix}/image/edit/upload", root(&h));
        let resp = client()
            .post(&url)
            .bearer_auth(KEY)
            .multipart(upload_form(Some(png_bytes(120, 80)), Some(data)))
            .send()
            .await
            .expect("sent");
        assert_eq!(resp.status(), StatusCode::OK);
        let out = json_of(resp).await["data"].clone();
        assert_eq!(
            (
                out["input"]["width"].as_u64(),
                out["input"]["height"].as_u64()
            ),
            (Some(120), Some(80))
        );
        download_matches(&out["output"]).await;
    }
    let url = format!("{}/v1/image/edit/upload", root(&h));
    let send = |form| client().post(&url).bearer_auth(KEY).multipart(form).send();
    let env = envelope(
        send(upload_form(None, Some(data))).await.expect("sent"),
        StatusCode::UNPROCESSABLE_ENTITY,
        "9000",
    )
    .await;
    assert!(env["error_details"]["file"].is_array(), "{env}");
    let env = envelope(
        send(upload_form(Some(png_bytes(4, 4)), None))
            .await
            .expect("sent"),
        StatusCode::UNPROCESSABLE_ENTITY,
        "9000",
    )
    .await;
    assert!(env["error_details"]["data"].is_array(), "{env}");
    let only_other = reqwest::multipart::Form::new().text("other", "x");
    let env = envelope(
        send(only_other).await.expect("sent"),
        StatusCode::UNPROCESSABLE_ENTITY,
        "9000",
    )
    .await;
    assert!(
        env["error_details"]["data"].is_array() && env["error_details"]["file"].is_array(),
        "{env}"
    );
    let env = envelope(
        send(upload_form(Some(png_bytes(4, 4)), Some("{nope")))
            .await
            .expect("sent"),
        StatusCode::BAD_REQUEST,
        "1000",
    )
    .await;
    assert!(
        env["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("data")),
        "{env}"
    );
    // A file over the 64 MiB body limit: 413, as documented (it was a 400 "Cannot read the
    // `file` part", so the daemon's `claid-too-large` was never seen against the emulator).
    let env = envelope(
        send(upload_form(Some(vec![0u8; 65 * 1024 * 1024]), Some(data)))
            .await
            .expect("sent"),
        StatusCode::PAYLOAD_TOO_LARGE,
        "1413",
    )
    .await;
    assert!(env["error_message"].is_string(), "{env}");
    // Not multipart at all.
    let resp = client()
        .post(&url)
        .bearer_auth(KEY)
        .json(&json!({}))
        .send()
        .await
        .expect("sent");
    let env = envelope(resp, StatusCode::BAD_REQUEST, "1000").await;
    assert!(
        env["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("multipart")),
        "{env}"
    );
    // Undecodable file.
    let resp = send(upload_form(Some(b"not an image".to_vec()), Some(data)))
        .await
        .expect("sent");
    envelope(resp, StatusCode::BAD_REQUEST, "1002").await;
    assert_eq!(h.stats().uploads, 2);
}

#[tokio::test]
async fn auth_accepts_only_the_configured_key() {
    let h = start(quick().api_key("sekret")).await;
    let url = format!("{}/image/edit/async/1", h.base_url());
    let resp = client().get(&url).send().await.expect("sent");
    let env = envelope(resp, StatusCode::UNAUTHORIZED, "111").await;
    assert_eq!(env["error_type"], "auth");
    let resp = client()
        .get(&url)
        .bearer_auth("other")
        .send()
        .await
        .expect("sent");
    envelope(resp, StatusCode::UNAUTHORIZED, "111").await;
    let resp = client()
        .get(&url)
        .header("authorization", "Basic c2VrcmV0")
        .send()
        .await
        .expect("sent");
    envelope(resp, StatusCode::UNAUTHORIZED, "111").await;
    let resp = client()
        .get(&url)
        .bearer_auth("sekret")
        .send()
        .await
        .expect("sent");
    envelope(resp, StatusCode::NOT_FOUND, "1404").await;

    // Without a configured key any non-empty key works, an empty one does not.
    let open = start(quick()).await;
    let url = format!("{}/image/edit/async/1", open.base_url());
    let resp = client()
        .get(&url)
        .bearer_auth("anything")
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = client()
        .get(&url)
        .header("authorization", "Bearer ")
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn runtime_toggles_give_402_403_503_and_recover() {
    let h = start(quick()).await;
    let submit_url = format!("{}/image/edit/async", h.base_url());
    let body = edit_body("storage://demo/x-20x20.png");
    let accepted = submit(&h.base_url(), &body).await;
    let poll_url = accepted["result_url"].as_str().expect("url").to_owned();

    h.control().set_credits_exhausted(true);
    let env = envelope(
        post_json(&submit_url, &body).await,
        StatusCode::PAYMENT_REQUIRED,
        "1402",
    )
    .await;
    assert_eq!(env["error_type"], "billing");
    assert_eq!(
        get(&poll_url).await.status(),
        StatusCode::OK,
        "polls are not billed"
    );
    h.control().set_credits_exhausted(false);

    // The same toggles over HTTP.
    let control = format!("{}/_emulator/control", root(&h));
    let state = json_of(
        client()
            .post(&control)
            .json(&json!({"forbidden": true}))
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(
        state,
        json!({"credits_exhausted": false, "forbidden": true, "down": false, "downloads_down": false, "downloads_rate_limited": false, "polls_down_for": 0})
    );
    envelope(
        post_json(&submit_url, &body).await,
        StatusCode::FORBIDDEN,
        "1403",
    )
    .await;
    envelope(get(&poll_url).await, StatusCode::FORBIDDEN, "1403").await;
    client()
        .post(&control)
        .json(&json!({"forbidden": false, "down": true}))
        .send()
        .await
        .expect("sent");
    envelope(
        post_json(&submit_url, &body).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "1503",
    )
    .await;
    envelope(
        get(&poll_url).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "1503",
    )
    .await;
    let resp = client()
        .post(&control)
        .body("{oops")
        .header("content-type", "application/json")
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    client()
        .post(&control)
        .json(&json!({"down": false}))
        .send()
        .await
        .expect("sent");
    assert_eq!(post_json(&submit_url, &body).await.status(), StatusCode::OK);
    let stats = h.stats();
    assert_eq!(stats.submits, 2);
    assert_eq!(stats.errors_5xx, 2);
}

#[tokio::test]
async fn scenario_can_start_without_credits_or_scope() {
    let h = start(quick().credits_exhausted(true)).await;
    envelope(
        post_json(
            &format!("{}/image/edit", h.base_url()),
            &edit_body("storage://demo/x-8x8.png"),
        )
        .await,
        StatusCode::PAYMENT_REQUIRED,
        "1402",
    )
    .await;
    let h = start(quick().forbidden(true)).await;
    envelope(
        get(&format!("{}/image/edit/async/1", h.base_url())).await,
        StatusCode::FORBIDDEN,
        "1403",
    )
    .await;
}

#[tokio::test]
async fn polls_of_unknown_or_non_integer_ids() {
    let h = start(quick()).await;
    for prefix in ["/v1", "/v1-beta1"] {
        let env = envelope(
            get(&format!("{}{prefix}/image/edit/async/999", root(&h))).await,
            StatusCode::NOT_FOUND,
            "1404",
        )
        .await;
        assert_eq!(env["error_message"], "Batch image edit pipeline not found.");
        let env = envelope(
            get(&format!("{}{prefix}/image/edit/async/abc", root(&h))).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "9000",
        )
        .await;
        assert!(env["error_details"]["task_id"].is_array(), "{env}");
    }
    // Unknown paths answer with the envelope too.
    envelope(
        get(&format!("{}/image/nothing", h.base_url())).await,
        StatusCode::NOT_FOUND,
        "1404",
    )
    .await;
    envelope(
        client()
            .get(format!("{}/nowhere", root(&h)))
            .send()
            .await
            .expect("sent"),
        StatusCode::NOT_FOUND,
        "1404",
    )
    .await;
}

#[tokio::test]
async fn bad_bodies_get_the_envelope_and_the_server_keeps_serving() {
    let h = start(quick()).await;
    for path in ["/image/edit/async", "/image/edit"] {
        let url = format!("{}{path}", h.base_url());
        let env = envelope(
            post_json(&url, &json!({"operations": {}})).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "9000",
        )
        .await;
        assert!(env["error_details"]["input"].is_array(), "{env}");
        assert!(
            env["error_message"]
                .as_str()
                .is_some_and(|m| m.contains("input")),
            "{env}"
        );

        let resp = client()
            .post(&url)
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body("{\"input\":")
            .send()
            .await
            .expect("sent");
        let env = envelope(resp, StatusCode::BAD_REQUEST, "1000").await;
        assert!(
            env["error_message"]
                .as_str()
                .is_some_and(|m| m.contains("JSON")),
            "{env}"
        );

        let resp = client()
            .post(&url)
            .bearer_auth(KEY)
            .header("content-type", "text/plain")
            .body("hello")
            .send()
            .await
            .expect("sent");
        let env = envelope(resp, StatusCode::BAD_REQUEST, "1000").await;
        assert!(
            env["error_message"]
                .as_str()
                .is_some_and(|m| m.contains("Content-Type")),
            "{env}"
        );
    }
    let accepted = submit(&h.base_url(), &edit_body("storage://demo/ok-16x16.png")).await;
    assert_eq!(
        wait_terminal(accepted["result_url"].as_str().expect("url")).await["status"],
        "DONE"
    );
    assert_eq!(h.stats().submits, 1, "rejected bodies create no task");
}

#[tokio::test]
async fn tmp_urls_expire_after_the_ttl() {
    let h = start(quick().tmp_url_ttl(Duration::from_secs(1))).await;
    let data = json_of(
        post_json(
            &format!("{}/image/edit", h.base_url()),
            &edit_body("storage://demo/t-32x32.png"),
        )
        .await,
    )
    .await;
    let url = data["data"]["output"]["tmp_url"]
        .as_str()
        .expect("tmp_url")
        .to_owned();
    assert!(url.starts_with(&format!("{}/_emulator/results/", root(&h))));
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut seen_ok = false;
    loop {
        let status = client().get(&url).send().await.expect("sent").status();
        match status {
            StatusCode::OK => seen_ok = true,
            StatusCode::GONE => break,
            other => panic!("unexpected {other}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "tmp_url never expired"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(seen_ok, "expired before the first download");
    assert!(h.stats().downloads >= 1);
    let resp = client()
        .get(format!("{}/_emulator/results/unknown", root(&h)))
        .send()
        .await
        .expect("sent");
    envelope(resp, StatusCode::NOT_FOUND, "1404").await;
}

#[tokio::test]
async fn error_share_ends_tasks_in_error() {
    let h = start(quick().error_share(1.0)).await;
    let accepted = submit(&h.base_url(), &edit_body("storage://demo/e-10x10.png")).await;
    let done = wait_terminal(accepted["result_url"].as_str().expect("url")).await;
    assert_eq!(done["status"], "ERROR");
    assert!(
        done["errors"][0]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{done}"
    );
    assert!(done["errors"][0]["created_at"].is_string());
    assert_eq!(done["result"], json!({}));
    assert_eq!(h.stats().tasks_errored, 1);
}

#[tokio::test]
async fn error_share_is_roughly_respected() {
    let h = start(quick().error_share(0.5).seed(42)).await;
    let mut urls = Vec::new();
    for i in 0..40 {
        urls.push(
            submit(
                &h.base_url(),
                &edit_body(&format!("storage://demo/p{i}-8x8.png")),
            )
            .await["result_url"]
                .as_str()
                .expect("url")
                .to_owned(),
        );
    }
    let mut errors = 0;
    for url in &urls {
        if wait_terminal(url).await["status"] == "ERROR" {
            errors += 1;
        }
    }
    assert!((8..=32).contains(&errors), "{errors} of 40");
    assert_eq!(h.stats().tasks_errored, errors);
}

#[tokio::test]
async fn corrupt_and_unfetchable_inputs_fail() {
    let storage = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(storage.path().join("shop")).expect("mkdir");
    std::fs::write(storage.path().join("shop/ok.png"), png_bytes(30, 20)).expect("write");
    std::fs::write(storage.path().join("shop/garbage.png"), b"garbage").expect("write");
    let h = start(
        quick()
            .storage_root(storage.path())
            .corrupt_patterns(vec!["broken".into()]),
    )
    .await;
    let base = h.base_url();
    let check = |input: &'static str, status: &'static str| {
        let base = base.clone();
        async move {
            let accepted = submit(&base, &edit_body(input)).await;
            let done = wait_terminal(accepted["result_url"].as_str().expect("url")).await;
            assert_eq!(done["status"], status, "{input}: {done}");
            done
        }
    };
    let ok = check("storage://shop/ok.png", "DONE").await;
    assert_eq!(ok["result"]["input_object"]["width"], 30);
    download_matches(&ok["result"]["output_object"]).await;
    check("storage://demo/broken-10x10.png", "ERROR").await;
    check("storage://demo/corrupt-10x10.png", "DONE").await; // default pattern replaced
    check("storage://shop/missing.png", "ERROR").await;
    check("storage://shop/garbage.png", "ERROR").await;
    check("storage://shop/../../etc/passwd", "ERROR").await;
    check("storage://demo/no-size.png", "ERROR").await;
    check("https://example.com/a.png", "ERROR").await;
    assert_eq!(h.stats().tasks_errored, 6);

    // Without a storage root or a connector only the demo storage exists: any other storage
    // name is refused up front with 422 (no task is created).
    let bare = start(quick()).await;
    let resp = post_json(
        &format!("{}/image/edit", bare.base_url()),
        &edit_body("storage://shop/ok.png"),
    )
    .await;
    let env = envelope(resp, StatusCode::UNPROCESSABLE_ENTITY, "9000").await;
    assert!(
        env["error_details"]["input"][0]
            .as_str()
            .is_some_and(|m| m.contains("\"shop\" is not connected")),
        "{env}"
    );
    let resp = post_json(
        &format!("{}/image/edit", bare.base_url()),
        &edit_body("https://example.com/x.png"),
    )
    .await;
    let env = envelope(resp, StatusCode::BAD_REQUEST, "1001").await;
    assert!(
        env["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("https")),
        "{env}"
    );
    let resp = post_json(
        &format!("{}/image/edit", bare.base_url()),
        &edit_body("storage://demo/corrupt-9x9.png"),
    )
    .await;
    envelope(resp, StatusCode::BAD_REQUEST, "1002").await;
}

#[tokio::test]
async fn http_inputs_are_fetched_from_a_static_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("bag.png"), png_bytes(64, 48)).expect("write");
    let h = start(quick().static_dir(dir.path())).await;
    let input = format!("{}/_static/bag.png", root(&h));
    let resp = client().get(&input).send().await.expect("sent");
    assert_eq!(resp.status(), StatusCode::OK);
    let accepted = submit(&h.base_url(), &edit_body(&input)).await;
    let done = wait_terminal(accepted["result_url"].as_str().expect("url")).await;
    assert_eq!(done["status"], "DONE", "{done}");
    assert_eq!(done["result"]["input_object"]["width"], 64);
    download_matches(&done["result"]["output_object"]).await;
    let missing = submit(
        &h.base_url(),
        &edit_body(&format!("{}/_static/none.png", root(&h))),
    )
    .await;
    let failed = wait_terminal(missing["result_url"].as_str().expect("url")).await;
    assert_eq!(failed["status"], "ERROR");
    assert!(
        failed["errors"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("404")),
        "{failed}"
    );
}

#[tokio::test]
async fn injected_5xx_per_endpoint() {
    let all = FaultShares {
        submit: 1.0,
        poll: 1.0,
        download: 1.0,
        upload: 1.0,
        sync: 1.0,
    };
    let h = start(quick().fault_5xx(all)).await;
    let base = h.base_url();
    envelope(
        post_json(
            &format!("{base}/image/edit/async"),
            &edit_body("storage://demo/a-8x8.png"),
        )
        .await,
        StatusCode::INTERNAL_SERVER_ERROR,
        "1500",
    )
    .await;
    envelope(
        get(&format!("{base}/image/edit/async/1")).await,
        StatusCode::INTERNAL_SERVER_ERROR,
        "1500",
    )
    .await;
    envelope(
        post_json(
            &format!("{base}/image/edit"),
            &edit_body("storage://demo/a-8x8.png"),
        )
        .await,
        StatusCode::INTERNAL_SERVER_ERROR,
        "1500",
    )
    .await;
    let resp = client()
        .post(format!("{base}/image/edit/upload"))
        .bearer_auth(KEY)
        .multipart(upload_form(Some(png_bytes(4, 4)), Some("{}")))
        .send()
        .await
        .expect("sent");
    envelope(resp, StatusCode::INTERNAL_SERVER_ERROR, "1500").await;
    envelope(
        client()
            .get(format!("{}/_emulator/results/x", root(&h)))
            .send()
            .await
            .expect("sent"),
        StatusCode::INTERNAL_SERVER_ERROR,
        "1500",
    )
    .await;
    let stats = h.stats();
    assert_eq!(
        (
            stats.errors_5xx,
            stats.submits,
            stats.sync_edits,
            stats.uploads
        ),
        (5, 0, 0, 0)
    );

    // Only the poll endpoint failing: submits and sync edits still work.
    let h = start(quick().fault_5xx(FaultShares {
        poll: 1.0,
        ..FaultShares::default()
    }))
    .await;
    let accepted = submit(&h.base_url(), &edit_body("storage://demo/a-8x8.png")).await;
    assert_eq!(
        get(accepted["result_url"].as_str().expect("url"))
            .await
            .status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        post_json(
            &format!("{}/image/edit", h.base_url()),
            &edit_body("storage://demo/a-8x8.png")
        )
        .await
        .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn dropped_submits_create_the_task_but_close_the_connection() {
    let h = start(quick().drop_share(1.0)).await;
    let result = client()
        .post(format!("{}/image/edit/async", h.base_url()))
        .bearer_auth(KEY)
        .json(&edit_body("storage://demo/d-8x8.png"))
        .send()
        .await;
    let err = result.expect_err("no response");
    assert!(!err.is_timeout(), "closed, not timed out: {err}");
    let stats = h.stats();
    assert_eq!((stats.submits, stats.dropped_responses), (1, 1));
    // The task exists and finishes although nobody learnt its id.
    let done = wait_terminal(&format!("{}/image/edit/async/1", h.base_url())).await;
    assert_eq!(done["status"], "DONE");
    // Polls are not dropped.
    assert_eq!(h.stats().dropped_responses, 1);
}

#[tokio::test]
async fn per_second_limit_answers_429_with_headers() {
    let h = start(quick().rps(3).rpm(100)).await;
    let url = format!("{}/image/edit/async/77", h.base_url());
    let first = get(&url).await;
    assert_eq!(first.headers()["ratelimit-limit"], "3, 100;w=60, 3;w=1");
    assert_eq!(first.headers()["ratelimit-remaining"], "2");
    assert!(first.headers().contains_key("ratelimit-reset"));
    get(&url).await;
    get(&url).await;
    let refused = get(&url).await;
    assert_eq!(refused.headers()["ratelimit-remaining"], "-1");
    assert_eq!(refused.headers()["ratelimit-limit"], "3, 100;w=60, 3;w=1");
    assert_eq!(refused.headers()["ratelimit-reset"], "1");
    let env = envelope(refused, StatusCode::TOO_MANY_REQUESTS, "2001").await;
    assert_eq!(env["error_type"], "general");
    // Once the second has slid by, requests pass again.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if get(&url).await.status() == StatusCode::NOT_FOUND {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "limit never lifted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(h.stats().rate_limited >= 1);
}

#[tokio::test]
async fn per_minute_limit_counts_submits_and_polls_but_not_downloads() {
    let h = start(quick().rpm(3)).await;
    let data = json_of(
        post_json(
            &format!("{}/image/edit", h.base_url()),
            &edit_body("storage://demo/r-16x16.png"),
        )
        .await,
    )
    .await;
    let tmp = data["data"]["output"]["tmp_url"]
        .as_str()
        .expect("tmp_url")
        .to_owned();
    let accepted = submit(&h.base_url(), &edit_body("storage://demo/r-16x16.png")).await;
    for _ in 0..5 {
        assert_eq!(
            client().get(&tmp).send().await.expect("sent").status(),
            StatusCode::OK
        );
    }
    let url = accepted["result_url"].as_str().expect("url");
    let third = get(url).await;
    assert_eq!(third.status(), StatusCode::OK);
    assert_eq!(third.headers()["ratelimit-remaining"], "0");
    let refused = get(url).await;
    let reset: u64 = refused.headers()["ratelimit-reset"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("number");
    assert!((1..=60).contains(&reset), "{reset}");
    assert_eq!(refused.headers()["ratelimit-limit"], "3, 3;w=60");
    envelope(refused, StatusCode::TOO_MANY_REQUESTS, "2001").await;
    let stats = h.stats();
    assert_eq!((stats.rate_limited, stats.downloads), (1, 5));
}

#[tokio::test]
async fn latency_walks_accepted_processing_done() {
    let latency = Duration::from_millis(400);
    let h = start(Scenario::default().latency(Latency::Fixed(latency))).await;
    let started = tokio::time::Instant::now();
    let accepted = submit(&h.base_url(), &edit_body("storage://demo/l-8x8.png")).await;
    let url = accepted["result_url"].as_str().expect("url");
    let mut seen: Vec<String> = Vec::new();
    let deadline = started + DEADLINE;
    loop {
        let data = json_of(get(url).await).await["data"].clone();
        let status = data["status"].as_str().expect("status").to_owned();
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        if status == "DONE" {
            break;
        }
        assert_eq!(data["result"], json!({}), "no result before DONE");
        assert!(
            tokio::time::Instant::now() < deadline,
            "never done: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        started.elapsed() >= latency,
        "DONE after {:?}",
        started.elapsed()
    );
    assert_eq!(seen, ["ACCEPTED", "PROCESSING", "DONE"]);
}

#[tokio::test]
async fn uniform_latency_spreads_completion() {
    let h = start(
        Scenario::default()
            .latency(Latency::Uniform {
                min: Duration::from_millis(50),
                max: Duration::from_millis(600),
            })
            .seed(3),
    )
    .await;
    let started = tokio::time::Instant::now();
    let mut urls = Vec::new();
    for i in 0..6 {
        urls.push(
            submit(
                &h.base_url(),
                &edit_body(&format!("storage://demo/u{i}-8x8.png")),
            )
            .await["result_url"]
                .as_str()
                .expect("url")
                .to_owned(),
        );
    }
    for url in &urls {
        assert_eq!(wait_terminal(url).await["status"], "DONE");
    }
    assert!(started.elapsed() >= Duration::from_millis(50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_exactly() {
    let h = start(Scenario::default().latency(Latency::Fixed(Duration::from_millis(300)))).await;
    let base = h.base_url();
    let a = edit_body("storage://demo/s-8x8.png");
    let b =
        json!({"input": "storage://demo/s-8x8.png", "operations": {"resizing": {"width": 100}}});
    let t1 = submit(&base, &a).await;
    let t2 = submit(&base, &a).await;
    submit(&base, &b).await;
    get(t1["result_url"].as_str().expect("url")).await;
    get(t1["result_url"].as_str().expect("url")).await;
    get(t2["result_url"].as_str().expect("url")).await;
    // Five sync edits at once, each held for the latency: all in flight together.
    let sync_url = format!("{base}/image/edit");
    let edits: Vec<_> = (0..5).map(|_| post_json(&sync_url, &a)).collect();
    for resp in futures_util::future::join_all(edits).await {
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let stats = h.stats();
    assert_eq!(stats.submits, 3);
    assert_eq!(stats.duplicate_submits, 1);
    assert_eq!(stats.submits_by_key.len(), 2);
    assert_eq!(stats.submits_by_key[&emulator::submit_key(&a)], 2);
    assert_eq!(stats.polls, 3);
    assert_eq!(
        stats.polls_by_task.get(&t1["id"].as_u64().expect("id")),
        Some(&2)
    );
    assert_eq!(stats.sync_edits, 5);
    assert_eq!(stats.requests, 11);
    assert_eq!(stats.max_concurrent, 5);
    // The same numbers over HTTP.
    let over_http: emulator::Stats = client()
        .get(format!("{}/_emulator/stats", root(&h)))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("stats json");
    assert_eq!(over_http, stats);
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let h = start(quick()).await;
    let mut ids = std::collections::HashSet::new();
    for url in [
        format!("{}/image/edit/async/1", h.base_url()),
        format!("{}/_emulator/stats", root(&h)),
        format!("{}/x", root(&h)),
    ] {
        let resp = client().get(&url).send().await.expect("sent");
        let id = resp.headers()["x-request-id"]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(id.matches('-').count(), 4, "{id}");
        ids.insert(id);
    }
    assert_eq!(ids.len(), 3, "ids are random");
}

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    scenario: ScenarioArgs,
}

#[test]
fn scenario_flags_parse_into_a_scenario() {
    use clap::Parser;
    let cli = Cli::try_parse_from([
        "x",
        "--api-key",
        "k",
        "--latency",
        "lognormal:500ms,0.4",
        "--seed",
        "9",
        "--error-share",
        "0.1",
        "--submit-5xx",
        "0.2",
        "--poll-5xx",
        "0.3",
        "--download-5xx",
        "0.4",
        "--upload-5xx",
        "0.5",
        "--sync-5xx",
        "0.6",
        "--drop-share",
        "0.05",
        "--rps",
        "0",
        "--rpm",
        "60",
        "--tmp-url-ttl",
        "10m",
        "--corrupt-pattern",
        "bad",
        "--corrupt-pattern",
        "worse",
        "--storage-root",
        "/s",
        "--static-dir",
        "/t",
        "--credits-exhausted",
        "--forbidden",
    ])
    .expect("parses");
    let s = cli.scenario.into_scenario();
    assert_eq!(s.api_key.as_deref(), Some("k"));
    assert_eq!(
        s.latency,
        Latency::LogNormal {
            median: Duration::from_millis(500),
            sigma: 0.4
        }
    );
    assert_eq!(s.seed, Some(9));
    assert_eq!(
        s.fault_5xx,
        FaultShares {
            submit: 0.2,
            poll: 0.3,
            download: 0.4,
            upload: 0.5,
            sync: 0.6
        }
    );
    assert_eq!((s.error_share, s.drop_share), (0.1, 0.05));
    assert_eq!((s.rps, s.rpm), (None, Some(60)));
    assert_eq!(s.tmp_url_ttl, Duration::from_secs(600));
    assert_eq!(s.corrupt_patterns, ["bad", "worse"]);
    assert!(s.credits_exhausted && s.forbidden);

    let defaults = Cli::try_parse_from(["x"])
        .expect("parses")
        .scenario
        .into_scenario();
    assert_eq!((defaults.rps, defaults.rpm), (Some(4), Some(120)));
    assert_eq!(defaults.tmp_url_ttl, Duration::from_secs(24 * 3600));
    assert_eq!(defaults.corrupt_patterns, ["corrupt"]);
    assert!(Cli::try_parse_from(["x", "--error-share", "1.5"]).is_err());
    assert!(Cli::try_parse_from(["x", "--latency", "sometimes"]).is_err());
}

#[tokio::test]
async fn schema_problems_are_all_reported_by_field_path() {
    let h = start(quick()).await;
    let body = json!({
        "input": "storage://demo/v-10x10.png",
        "operations": {"adjustments": {"exposure": 500}, "resizing": {"fit": "stretch"}, "bogus": 1},
    });
    for path in ["/image/edit/async", "/image/edit"] {
        let resp = post_json(&format!("{}{path}", h.base_url()), &body).await;
        let env = envelope(resp, StatusCode::UNPROCESSABLE_ENTITY, "9000").await;
        assert_eq!(env["error_type"], "validation");
        let details = env["error_details"].as_object().expect("details");
        for key in ["operations.adjustments.exposure", "operations.resizing.fit"] {
            assert!(
                details.get(key).is_some_and(Value::is_array),
                "{key} missing in {env}"
            );
            assert!(
                env["error_message"]
                    .as_str()
                    .is_some_and(|m| m.contains(key)),
                "{env}"
            );
        }
        assert!(details.keys().any(|k| k.contains("bogus")), "{env}");
    }
    // The upload `data` part must not carry `input`.
    let form = upload_form(
        Some(png_bytes(4, 4)),
        Some(r#"{"input":"storage://demo/a-4x4.png","operations":{}}"#),
    );
    let resp = client()
        .post(format!("{}/image/edit/upload", h.base_url()))
        .bearer_auth(KEY)
        .multipart(form)
        .send()
        .await
        .expect("sent");
    let env = envelope(resp, StatusCode::UNPROCESSABLE_ENTITY, "9000").await;
    assert!(env["error_details"]["input"].is_array(), "{env}");
    // avif cannot be produced here: refused up front, no task.
    let avif = json!({"input": "storage://demo/v-10x10.png", "operations": {}, "output": {"format": "avif"}});
    let env = envelope(
        post_json(&format!("{}/image/edit/async", h.base_url()), &avif).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "9000",
    )
    .await;
    assert!(env["error_details"]["output.format"].is_array(), "{env}");
    assert_eq!(h.stats().submits, 0);
    // Wrong method on an API path.
    let resp = client()
        .delete(format!("{}/image/edit/async", h.base_url()))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("sent");
    envelope(resp, StatusCode::METHOD_NOT_ALLOWED, "1405").await;
}

#[tokio::test]
async fn every_fit_mode_produces_claid_dimensions() {
    use claid_hotfolder::claid::request::{InputRule, validate};
    use claid_hotfolder::emulator::imaging::output_dimensions;
    let h = start(quick()).await;
    // Input 400x300, box 200x200 (or one side only).
    let check = |resizing: Value, expected: Option<(u64, u64)>| {
        let base = h.base_url();
        async move {
            let body = json!({"input": "storage://demo/fit-400x300.png", "operations": {"resizing": resizing}, "output": {"format": "png"}});
            let req = validate(&body, InputRule::Required).expect("valid request");
            let (w, h) = output_dimensions(400, 300, &req);
            if let Some(expected) = expected {
                assert_eq!(
                    (u64::from(w), u64::from(h)),
                    expected,
                    "output_dimensions for {resizing}"
                );
            }
            let accepted = submit(&base, &body).await;
            let done = wait_terminal(accepted["result_url"].as_str().expect("url")).await;
            assert_eq!(done["status"], "DONE", "{resizing}: {done}");
            let out = &done["result"]["output_object"];
            assert_eq!(
                (out["width"].as_u64(), out["height"].as_u64()),
                (Some(u64::from(w)), Some(u64::from(h))),
                "{resizing}"
            );
            download_matches(out).await;
        }
    };
    check(
        json!({"width": 200, "height": 200, "fit": "crop"}),
        Some((200, 200)),
    )
    .await;
    check(
        json!({"width": 200, "height": 200, "fit": {"type": "crop", "crop": "center"}}),
        Some((200, 200)),
    )
    .await;
    check(
        json!({"width": 200, "height": 200, "fit": "bounds"}),
        Some((200, 150)),
    )
    .await;
    check(
        json!({"width": 200, "height": 200, "fit": "canvas"}),
        Some((200, 200)),
    )
    .await;
    check(
        json!({"width": 200, "height": 200, "fit": "outpaint"}),
        Some((200, 200)),
    )
    .await;
    check(json!({"width": 200, "height": 200, "fit": "cover"}), None).await;
    check(json!({"width": "50%", "height": "50%"}), Some((200, 150))).await;
    check(json!({"width": 200, "fit": "bounds"}), Some((200, 150))).await;
    check(json!({"width": 200}), Some((200, 300))).await;
}

#[tokio::test]
async fn a_seed_reproduces_the_random_decisions() {
    async fn outcomes(seed: u64) -> Vec<String> {
        let h = start(quick().error_share(0.5).seed(seed)).await;
        let mut urls = Vec::new();
        for i in 0..12 {
            let accepted = submit(
                &h.base_url(),
                &edit_body(&format!("storage://demo/seed{i}-8x8.png")),
            )
            .await;
            urls.push(accepted["result_url"].as_str().expect("url").to_owned());
        }
        let mut statuses = Vec::new();
        for url in &urls {
            statuses.push(
                wait_terminal(url).await["status"]
                    .as_str()
                    .expect("status")
                    .to_owned(),
            );
        }
        statuses
    }
    let first = outcomes(11).await;
    assert_eq!(first, outcomes(11).await);
    assert!(
        first.iter().any(|s| s == "ERROR") && first.iter().any(|s| s == "DONE"),
        "{first:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Batches

/// A batch body: crop to 200x100, jpeg output.
fn batch_body(input: Value) -> Value {
    json!({"input": input, "operations": {"resizing": {"width": 200, "height": 100, "fit": "crop"}}, "output": {"format": "jpeg"}})
}

/// Submits a batch and returns the accepted `data`.
async fn submit_batch(base: &str, body: &Value) -> Value {
    let resp = post_json(&format!("{base}/image/edit/batch"), body).await;
    assert_eq!(resp.status(), StatusCode::OK);
    json_of(resp).await["data"].clone()
}

/// The file name of a result: the last path segment of its tmp_url.
fn result_name(item: &Value) -> String {
    let url = item["output_object"]["tmp_url"].as_str().expect("tmp_url");
    url.rsplit('/').next().expect("segment").to_owned()
}

fn names_of(done: &Value) -> Vec<String> {
    done["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(result_name)
        .collect()
}

#[tokio::test]
async fn batch_happy_path_names_and_dimensions_on_both_prefixes() {
    let h = start(quick()).await;
    let inputs = [
        (
            "storage://demo/shoes/sku-1-640x480.png",
            "sku-1-640x480.jpg",
            (640, 480),
        ),
        (
            "storage://demo/bags/sku-2-300x300.jpg",
            "sku-2-300x300.jpg",
            (300, 300),
        ),
        (
            "storage://demo/sku-3-120x90.webp",
            "sku-3-120x90.jpg",
            (120, 90),
        ),
    ];
    let urls: Vec<&str> = inputs.iter().map(|(url, _, _)| *url).collect();
    for prefix in ["/v1", "/v1-beta1"] {
        let base = format!("{}{prefix}", root(&h));
        let body = batch_body(json!(urls));
        let accepted = submit_batch(&base, &body).await;
        assert_eq!(accepted["status"], "ACCEPTED");
        assert_eq!(accepted["request"], body);
        assert_eq!(
            (&accepted["results"], &accepted["errors"]),
            (&json!([]), &json!([]))
        );
        let id = accepted["id"].as_u64().expect("integer id");
        let url = accepted["result_url"].as_str().expect("result_url");
        assert_eq!(url, format!("{base}/image/edit/batch/{id}"));
        let done = wait_terminal(url).await;
        assert_eq!(done["status"], "DONE", "{done}");
        assert_eq!(done["errors"], json!([]));
        // Without shuffling, results come in input order, each named after its input.
        let expected: Vec<&str> = inputs.iter().map(|(_, name, _)| *name).collect();
        assert_eq!(names_of(&done), expected);
        for (item, (_, _, (w, h_in))) in done["results"]
            .as_array()
            .expect("results")
            .iter()
            .zip(&inputs)
        {
            assert_image_object(&item["input_object"]);
            assert_eq!(
                (
                    item["input_object"]["width"].as_u64(),
                    item["input_object"]["height"].as_u64()
                ),
                (Some(*w), Some(*h_in))
            );
            let output = &item["output_object"];
            assert_eq!(
                (output["width"].as_u64(), output["height"].as_u64()),
                (Some(200), Some(100))
            );
            assert_eq!(
                (&output["format"], &output["ext"]),
                (&json!("jpeg"), &json!("jpg"))
            );
            download_matches(output).await;
        }
    }
    let stats = h.stats();
    assert_eq!(
        (stats.batch_submits, stats.batch_images, stats.submits),
        (2, 6, 0)
    );
    assert_eq!(stats.batches.len(), 2);
    assert!(
        stats
            .batches
            .values()
            .all(|t| t.images == 3 && t.failed == 0)
    );
    // Each image counts under the key an async submit of it would have.
    let key = emulator::submit_key(&json!({
        "input": urls[0],
        "operations": batch_body(json!(null))["operations"],
        "output": {"format": "jpeg"},
    }));
    assert_eq!(stats.submits_by_key.get(&key), Some(&2));
    assert_eq!(
        stats.duplicate_submits, 3,
        "the second batch repeats all three"
    );
    let over_http: emulator::Stats = client()
        .get(format!("{}/_emulator/stats", root(&h)))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("stats json");
    assert_eq!(over_http, stats);
}

#[tokio::test]
async fn an_image_paid_by_async_and_by_batch_counts_as_a_duplicate() {
    let h = start(quick()).await;
    let input = "storage://demo/twice-64x64.png";
    let body = batch_body(json!(input));
    let mut single = body.clone();
    single["input"] = json!(input);
    let task = submit(&h.base_url(), &single).await;
    let batch = submit_batch(&h.base_url(), &body).await;
    assert_ne!(
        task["id"], batch["id"],
        "one id sequence for tasks and batches"
    );
    let done = wait_terminal(batch["result_url"].as_str().expect("url")).await;
    assert_eq!(names_of(&done), ["twice-64x64.jpg"]);
    let stats = h.stats();
    assert_eq!((stats.submits, stats.batch_images), (1, 1));
    assert_eq!(stats.submits_by_key[&emulator::submit_key(&single)], 2);
    assert_eq!(stats.duplicate_submits, 1);
}

#[tokio::test]
async fn shuffled_batch_results_still_name_every_input() {
    let urls: Vec<String> = (0..12)
        .map(|i| format!("storage://demo/item-{i}-16x16.png"))
        .collect();
    let expected: Vec<String> = (0..12).map(|i| format!("item-{i}-16x16.jpg")).collect();
    let h = start(quick().shuffle_results(true).seed(5)).await;
    let accepted = submit_batch(&h.base_url(), &batch_body(json!(urls))).await;
    let done = wait_terminal(accepted["result_url"].as_str().expect("url")).await;
    let names = names_of(&done);
    assert_ne!(
        names, expected,
        "a seeded shuffle of 12 results changes their order"
    );
    let got: BTreeSet<&String> = names.iter().collect();
    assert_eq!(got, expected.iter().collect::<BTreeSet<_>>());
    // Each result still describes its own image.
    for item in done["results"].as_array().expect("results") {
        download_matches(&item["output_object"]).await;
    }
}

#[tokio::test]
async fn a_batch_with_failing_images_is_done_with_errors() {
    let h = start(quick()).await;
    let good = [
        "storage://demo/ok-1-32x32.png",
        "storage://demo/ok-2-32x32.png",
    ];
    let bad = [
        "storage://demo/corrupt-32x32.png",
        "storage://demo/not-a-demo-name.png",
    ];
    let inputs = [good[0], bad[0], good[1], bad[1]];
    let accepted = submit_batch(&h.base_url(), &batch_body(json!(inputs))).await;
    let id = accepted["id"].as_u64().expect("id");
    let done = wait_terminal(accepted["result_url"].as_str().expect("url")).await;
    assert_eq!(done["status"], "DONE", "partial success is DONE: {done}");
    assert_eq!(names_of(&done), ["ok-1-32x32.jpg", "ok-2-32x32.jpg"]);
    let errors = done["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 2, "{done}");
    for (error, input) in errors.iter().zip(bad) {
        let text = error["error"].as_str().expect("error text");
        assert!(text.starts_with(&format!("{input}: ")), "{text}");
        assert!(error["created_at"].is_string());
    }
    let stats = h.stats();
    assert_eq!(
        (stats.batch_images_failed, stats.batches[&id].failed),
        (2, 2)
    );
}

#[tokio::test]
async fn a_batch_whose_images_all_fail_is_error() {
    let h = start(quick().error_share(1.0)).await;
    let inputs = [
        "storage://demo/f-1-20x10.png",
        "storage://demo/f-2-20x10.png",
    ];
    let accepted = submit_batch(&h.base_url(), &batch_body(json!(inputs))).await;
    let done = wait_terminal(accepted["result_url"].as_str().expect("url")).await;
    assert_eq!(done["status"], "ERROR", "{done}");
    assert_eq!(done["results"], json!([]));
    let errors = done["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 2);
    for error in errors {
        // The images were read before the (injected) failure: their input is described.
        assert_eq!(error["input_object"]["width"], 20, "{error}");
        assert_image_object(&error["input_object"]);
    }
    assert_eq!(h.stats().batch_images_failed, 2);
}

#[tokio::test]
async fn renamed_results_match_no_input() {
    let h = start(quick().batch_rename_share(1.0)).await;
    let inputs = [
        "storage://demo/r-1-16x16.png",
        "storage://demo/r-2-16x16.png",
    ];
    let accepted = submit_batch(&h.base_url(), &batch_body(json!(inputs))).await;
    let id = accepted["id"].as_u64().expect("id");
    let done = wait_terminal(accepted["result_url"].as_str().expect("url")).await;
    assert_eq!(done["status"], "DONE");
    let names = names_of(&done);
    assert_eq!(names.len(), 2);
    for name in &names {
        assert!(
            name.starts_with("unmatched-") && name.ends_with(".jpg"),
            "{name}"
        );
        assert!(!["r-1-16x16.jpg", "r-2-16x16.jpg"].contains(&name.as_str()));
    }
    assert_ne!(names[0], names[1]);
    let stats = h.stats();
    assert_eq!(
        (stats.batch_results_renamed, stats.batches[&id].renamed),
        (2, 2)
    );
}

#[tokio::test]
async fn colliding_output_names_are_counted() {
    let h = start(quick()).await;
    let inputs = [
        "storage://demo/a/sku-16x16.png",
        "storage://demo/b/sku-16x16.png",
        "storage://demo/sku-16x16.jpg",
        "storage://demo/other-16x16.png",
    ];
    let accepted = submit_batch(&h.base_url(), &batch_body(json!(inputs))).await;
    let id = accepted["id"].as_u64().expect("id");
    wait_terminal(accepted["result_url"].as_str().expect("url")).await;
    assert_eq!(h.stats().batches[&id].colliding_names, 2);
}

#[tokio::test]
async fn batch_polls_of_unknown_or_non_integer_ids() {
    let h = start(quick()).await;
    let task = submit(&h.base_url(), &edit_body("storage://demo/t-8x8.png")).await;
    let task_id = task["id"].as_u64().expect("id");
    for prefix in ["/v1", "/v1-beta1"] {
        for id in ["999".to_owned(), task_id.to_string()] {
            let env = envelope(
                get(&format!("{}{prefix}/image/edit/batch/{id}", root(&h))).await,
                StatusCode::NOT_FOUND,
                "1404",
            )
            .await;
            assert_eq!(env["error_message"], "Batch image edit pipeline not found.");
        }
        let env = envelope(
            get(&format!("{}{prefix}/image/edit/batch/abc", root(&h))).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "9000",
        )
        .await;
        assert!(env["error_details"]["task_id"].is_array(), "{env}");
    }
    assert_eq!(h.stats().batch_polls, 6);
}

#[tokio::test]
async fn bad_batch_bodies_get_422_with_every_problem() {
    let h = start(quick()).await;
    let url = format!("{}/image/edit/batch", h.base_url());
    // No connector is called shop (folder inputs are tested against S3 in tests/it/storage.rs).
    let storage = "storage \"shop\" is not connected";
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"input": "storage://shop/folder/", "operations": {}}),
            "input",
            storage,
        ),
        (
            json!({"input": {"source": "storage://shop/folder/", "recursive": true}, "operations": {}}),
            "input.source",
            storage,
        ),
        (
            json!({"input": [], "operations": {}}),
            "input",
            "at least one",
        ),
        (
            json!({"input": 7, "operations": {}}),
            "input",
            "list of image URLs",
        ),
        (json!({"operations": {}}), "input", "required"),
        (
            json!({"input": ["http://h/a.png", "ftp://h/b.png"], "operations": {}}),
            "input.1",
            "",
        ),
        (
            json!({"input": ["http://h/a.png"], "operations": {"resizing": {"width": 0}}}),
            "operations.resizing.width",
            "",
        ),
        (
            json!({"input": ["http://h/a.png"], "operations": {}, "output": {"format": "avif"}}),
            "output.format",
            "avif",
        ),
        (
            json!({"input": ["http://h/a.png"], "operations": {}, "extra": 1}),
            "extra",
            "unknown field",
        ),
    ];
    for (body, path, needle) in cases {
        let env = envelope(
            post_json(&url, &body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "9000",
        )
        .await;
        let messages = env["error_details"][path]
            .as_array()
            .unwrap_or_else(|| panic!("{path} in {env}"));
        assert!(
            messages
                .iter()
                .any(|m| m.as_str().is_some_and(|m| m.contains(needle))),
            "{needle:?} at {path} in {env}"
        );
    }
    // Every problem at once: the bad URL and the bad operation.
    let env = envelope(
        post_json(
            &url,
            &json!({"input": ["ftp://x/y.png"], "operations": {"resizing": {"width": 0}}}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "9000",
    )
    .await;
    assert!(
        env["error_details"]["input.0"].is_array()
            && env["error_details"]["operations.resizing.width"].is_array(),
        "{env}"
    );
    assert_eq!(
        h.stats().batch_submits,
        0,
        "rejected bodies create no batch"
    );
}

#[tokio::test]
async fn batch_parallelism_bounds_the_images_processing_at_once() {
    let latency = Duration::from_millis(200);
    let urls: Vec<String> = (0..16)
        .map(|i| format!("storage://demo/par-{i}-8x8.png"))
        .collect();
    for (parallelism, peak, waited, rounds) in [(8, 8, 8, 2), (16, 16, 0, 1)] {
        let h = start(
            Scenario::default()
                .latency(Latency::Fixed(latency))
                .batch_parallelism(parallelism),
        )
        .await;
        let accepted = submit_batch(&h.base_url(), &batch_body(json!(urls))).await;
        let id = accepted["id"].as_u64().expect("id");
        let done = wait_terminal(accepted["result_url"].as_str().expect("url")).await;
        assert_eq!(done["results"].as_array().map(Vec::len), Some(16));
        let trace = h.stats().batches[&id].clone();
        assert_eq!(
            (trace.peak_parallel, trace.waited_for_slot),
            (peak, waited),
            "parallelism {parallelism}: {trace:?}"
        );
        // Each image holds its slot for the latency: 16 images in 8 slots take two rounds.
        assert!(
            trace.busy_ms >= rounds * 200,
            "parallelism {parallelism}: {trace:?}"
        );
    }
}

#[tokio::test]
async fn batches_walk_accepted_processing_done() {
    let latency = Duration::from_millis(400);
    let h = start(Scenario::default().latency(Latency::Fixed(latency))).await;
    let accepted = submit_batch(
        &h.base_url(),
        &batch_body(json!(["storage://demo/w-8x8.png"])),
    )
    .await;
    let url = accepted["result_url"].as_str().expect("url");
    let mut seen: Vec<String> = vec!["ACCEPTED".to_owned()];
    loop {
        let data = json_of(get(url).await).await["data"].clone();
        let status = data["status"].as_str().expect("status").to_owned();
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        if status == "DONE" {
            break;
        }
        assert_eq!(data["results"], json!([]), "no results before DONE");
        assert!(seen.len() <= 3, "{seen:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen, ["ACCEPTED", "PROCESSING", "DONE"]);
}

#[tokio::test]
async fn dropped_batch_responses_still_create_the_batch() {
    let h = start(quick().drop_share(1.0)).await;
    let result = client()
        .post(format!("{}/image/edit/batch", h.base_url()))
        .bearer_auth(KEY)
        .json(&batch_body(json!(["storage://demo/d-8x8.png"])))
        .send()
        .await;
    assert!(result.is_err(), "no response");
    let stats = h.stats();
    assert_eq!((stats.batch_submits, stats.dropped_responses), (1, 1));
    let done = wait_terminal(&format!("{}/image/edit/batch/1", h.base_url())).await;
    assert_eq!(done["status"], "DONE");
}

// ---------------------------------------------------------------------------------------------
// Webhooks

/// What the local receiver got.
#[derive(Debug, Clone)]
struct Received {
    signature: Option<String>,
    body: axum::body::Bytes,
    /// The signature verified against the receiver's secret (true when it has none).
    verified: bool,
}

/// A webhook receiver on 127.0.0.1:0. With a secret it answers 401 to a bad or missing
/// signature (checked independently of the emulator's code), else 200.
struct Receiver {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start(secret: Option<&str>) -> Receiver {
        use axum::extract::State;
        use axum::http::HeaderMap;
        type Shared = (Option<Vec<u8>>, Arc<Mutex<Vec<Received>>>);
        async fn hook(
            State((secret, received)): State<Shared>,
            headers: HeaderMap,
            body: axum::body::Bytes,
        ) -> StatusCode {
            let signature = headers
                .get("x-claid-hmac-sha256")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let verified = secret
                .as_deref()
                .is_none_or(|secret| verifies(secret, &body, signature.as_deref()));
            received.lock().expect("lock").push(Received {
                signature,
                body,
                verified,
            });
            if verified {
                StatusCode::OK
            } else {
                StatusCode::UNAUTHORIZED
            }
        }
        let received = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route("/hooks/claid", axum::routing::post(hook))
            .with_state((secret.map(|s| s.as_bytes().to_vec()), Arc::clone(&received)));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind");
        let url = format!(
            "http://{}/hooks/claid",
            listener.local_addr().expect("addr")
        );
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("receiver serves");
        });
        Receiver {
            url,
            received,
            task,
        }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    async fn wait_for(&self, n: usize) -> Vec<Received> {
        wait_until(&format!("{n} webhook deliveries"), DEADLINE, || {
            self.received.lock().expect("lock").len() >= n
        })
        .await;
        self.received()
    }
}

/// HMAC-SHA256(secret, body) against a hex (64 characters) or base64 signature.
fn verifies(secret: &[u8], body: &[u8], signature: Option<&str>) -> bool {
    let Some(signature) = signature else {
        return false;
    };
    let decoded = if signature.len() == 64 {
        hex::decode(signature).ok()
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(signature)
            .ok()
    };
    decoded.is_some_and(|digest| {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
        mac.update(body);
        mac.verify_slice(&digest).is_ok()
    })
}

/// The result object inside a delivery, bare or wrapped.
fn delivered(r: &Received, body: WebhookBody) -> Value {
    let value: Value = serde_json::from_slice(&r.body).expect("webhook body is JSON");
    match body {
        WebhookBody::Bare => {
            assert!(value.get("data").is_none(), "bare body: {value}");
            value
        }
        WebhookBody::Wrapped => value["data"].clone(),
    }
}

async fn wait_stats(h: &Handle, what: &str, check: impl Fn(&emulator::Stats) -> bool) {
    wait_until(what, DEADLINE, || check(&h.stats())).await;
}

#[tokio::test]
async fn webhooks_are_signed_in_each_digest_and_body_shape() {
    const SECRET: &str = "whsec-test";
    for (digest, shape) in [
        (WebhookDigest::Hex, WebhookBody::Bare),
        (WebhookDigest::Hex, WebhookBody::Wrapped),
        (WebhookDigest::Base64, WebhookBody::Bare),
        (WebhookDigest::Base64, WebhookBody::Wrapped),
    ] {
        let receiver = Receiver::start(Some(SECRET)).await;
        let h = start(
            quick()
                .webhook_url(&receiver.url)
                .webhook_secret(SECRET)
                .webhook_digest(digest)
                .webhook_body(shape),
        )
        .await;
        let task_body = edit_body("storage://demo/hook-32x32.png");
        let task = submit(&h.base_url(), &task_body).await;
        let task_done = wait_terminal(task["result_url"].as_str().expect("url")).await;
        receiver.wait_for(1).await;
        let batch_body = batch_body(json!([
            "storage://demo/hook-a-8x8.png",
            "storage://demo/corrupt-8x8.png"
        ]));
        let batch = submit_batch(&h.base_url(), &batch_body).await;
        let batch_done = wait_terminal(batch["result_url"].as_str().expect("url")).await;
        let got = receiver.wait_for(2).await;
        assert_eq!(got.len(), 2, "{digest:?} {shape:?}");
        for r in &got {
            let signature = r.signature.as_deref().expect("signed");
            let want_len = if digest == WebhookDigest::Hex { 64 } else { 44 };
            assert_eq!(signature.len(), want_len, "{digest:?}: {signature}");
            assert!(
                r.verified,
                "{digest:?} {shape:?}: signature does not verify"
            );
        }
        // Each body is exactly what the poll answers, request echo included.
        assert_eq!(delivered(&got[0], shape), task_done, "{shape:?}");
        assert_eq!(delivered(&got[0], shape)["request"], task_body);
        assert_eq!(delivered(&got[1], shape), batch_done, "{shape:?}");
        assert_eq!(delivered(&got[1], shape)["request"], batch_body);
        // The shared wire type reads both shapes and tells the kinds apart.
        match TaskUpdate::parse(&got[1].body).expect("parses") {
            TaskUpdate::Batch(b) => {
                assert_eq!((b.results.len(), b.errors.len()), (1, 1));
                assert_eq!(
                    b.results[0].output_object.file_name().as_deref(),
                    Some("hook-a-8x8.jpg")
                );
            }
            TaskUpdate::Async(_) => panic!("batch read as a task"),
        }
        assert!(matches!(
            TaskUpdate::parse(&got[0].body),
            Ok(TaskUpdate::Async(_))
        ));
        let stats = h.stats();
        assert_eq!((stats.webhooks_sent, stats.webhooks_failed), (2, 0));
    }
}

#[tokio::test]
async fn webhooks_without_a_secret_are_unsigned() {
    let receiver = Receiver::start(None).await;
    let h = start(quick().webhook_url(&receiver.url)).await;
    submit(&h.base_url(), &edit_body("storage://demo/u-8x8.png")).await;
    let got = receiver.wait_for(1).await;
    assert!(got[0].signature.is_none());
    assert_eq!(delivered(&got[0], WebhookBody::Bare)["status"], "DONE");
}

#[tokio::test]
async fn an_error_task_is_announced_too() {
    let receiver = Receiver::start(None).await;
    let h = start(quick().error_share(1.0).webhook_url(&receiver.url)).await;
    submit(&h.base_url(), &edit_body("storage://demo/e-8x8.png")).await;
    let got = receiver.wait_for(1).await;
    let task = delivered(&got[0], WebhookBody::Bare);
    assert_eq!(task["status"], "ERROR");
    assert!(task["errors"][0]["error"].is_string(), "{task}");
}

#[tokio::test]
async fn dropped_webhooks_are_never_sent() {
    let receiver = Receiver::start(None).await;
    let h = start(quick().webhook_url(&receiver.url).webhook_drop_share(1.0)).await;
    for i in 0..3 {
        let accepted = submit(
            &h.base_url(),
            &edit_body(&format!("storage://demo/x{i}-8x8.png")),
        )
        .await;
        wait_terminal(accepted["result_url"].as_str().expect("url")).await;
    }
    wait_stats(&h, "3 webhooks dropped", |s| s.webhooks_dropped == 3).await;
    // A dropped delivery is decided before sending: nothing can still be on its way.
    assert!(receiver.received().is_empty());
    assert_eq!(h.stats().webhooks_sent, 0);
}

#[tokio::test]
async fn duplicated_webhooks_arrive_twice_identical() {
    const SECRET: &str = "dup-secret";
    let receiver = Receiver::start(Some(SECRET)).await;
    let h = start(
        quick()
            .webhook_url(&receiver.url)
            .webhook_secret(SECRET)
            .webhook_duplicate_share(1.0),
    )
    .await;
    submit(&h.base_url(), &edit_body("storage://demo/dup-8x8.png")).await;
    let got = receiver.wait_for(2).await;
    assert_eq!(got[0].body, got[1].body);
    assert!(got.iter().all(|r| r.verified));
    wait_stats(&h, "two deliveries counted", |s| s.webhooks_sent == 2).await;
    assert_eq!(h.stats().webhooks_duplicated, 1);
}

#[tokio::test]
async fn forged_webhooks_carry_a_wrong_signature_and_go_first() {
    const SECRET: &str = "real-secret";
    let receiver = Receiver::start(Some(SECRET)).await;
    let h = start(
        quick()
            .webhook_url(&receiver.url)
            .webhook_secret(SECRET)
            .webhook_forged_share(1.0),
    )
    .await;
    let accepted = submit(&h.base_url(), &edit_body("storage://demo/forge-8x8.png")).await;
    let got = receiver.wait_for(2).await;
    let (forged, genuine) = (&got[0], &got[1]);
    assert!(!forged.verified && genuine.verified);
    let forged_task = delivered(forged, WebhookBody::Bare);
    assert_eq!(forged_task["id"], accepted["id"]);
    assert_eq!(
        forged_task["status"], "ERROR",
        "a forgery that would hurt if believed"
    );
    assert_eq!(delivered(genuine, WebhookBody::Bare)["status"], "DONE");
    wait_stats(&h, "forged delivery counted", |s| {
        s.webhooks_forged == 1 && s.webhooks_sent == 1
    })
    .await;
    assert_eq!(
        h.stats().webhooks_forged_accepted,
        0,
        "the receiver refused it"
    );

    // A receiver that checks nothing is caught by the counter.
    let careless = Receiver::start(None).await;
    let h = start(
        quick()
            .webhook_url(&careless.url)
            .webhook_secret(SECRET)
            .webhook_forged_share(1.0),
    )
    .await;
    submit(&h.base_url(), &edit_body("storage://demo/forge-8x8.png")).await;
    careless.wait_for(2).await;
    wait_stats(&h, "forged delivery accepted", |s| {
        s.webhooks_forged_accepted == 1
    })
    .await;
}

#[tokio::test]
async fn delayed_webhooks_are_held_back() {
    let receiver = Receiver::start(None).await;
    let h = start(
        quick()
            .webhook_url(&receiver.url)
            .webhook_delay(1.0, Duration::from_secs(3600)),
    )
    .await;
    let accepted = submit(&h.base_url(), &edit_body("storage://demo/late-8x8.png")).await;
    wait_terminal(accepted["result_url"].as_str().expect("url")).await;
    wait_stats(&h, "webhook delayed", |s| s.webhooks_delayed == 1).await;
    assert!(receiver.received().is_empty(), "held for an hour");

    // A short delay: it does arrive.
    let soon = Receiver::start(None).await;
    let h = start(
        quick()
            .webhook_url(&soon.url)
            .webhook_delay(1.0, Duration::from_millis(100)),
    )
    .await;
    let accepted = submit(&h.base_url(), &edit_body("storage://demo/late-8x8.png")).await;
    let got = soon.wait_for(1).await;
    assert_eq!(delivered(&got[0], WebhookBody::Bare)["id"], accepted["id"]);
    assert_eq!(h.stats().webhooks_delayed, 1);
}

#[tokio::test]
async fn reordered_webhooks_arrive_after_the_next_one() {
    let receiver = Receiver::start(None).await;
    let h = start(
        quick()
            .webhook_url(&receiver.url)
            .webhook_reorder(1.0, Duration::from_secs(3600)),
    )
    .await;
    let first = submit(&h.base_url(), &edit_body("storage://demo/first-8x8.png")).await;
    wait_terminal(first["result_url"].as_str().expect("url")).await;
    wait_stats(&h, "first webhook held", |s| s.webhooks_reordered == 1).await;
    assert!(receiver.received().is_empty());
    let second = submit(&h.base_url(), &edit_body("storage://demo/second-8x8.png")).await;
    let got = receiver.wait_for(2).await;
    let ids: Vec<Value> = got
        .iter()
        .map(|r| delivered(r, WebhookBody::Bare)["id"].clone())
        .collect();
    assert_eq!(ids, [second["id"].clone(), first["id"].clone()]);

    // With nothing after it, a held webhook goes out when its hold ends.
    let alone = Receiver::start(None).await;
    let h = start(
        quick()
            .webhook_url(&alone.url)
            .webhook_reorder(1.0, Duration::from_millis(100)),
    )
    .await;
    let only = submit(&h.base_url(), &edit_body("storage://demo/only-8x8.png")).await;
    let got = alone.wait_for(1).await;
    assert_eq!(delivered(&got[0], WebhookBody::Bare)["id"], only["id"]);
}

#[tokio::test]
async fn a_webhook_can_arrive_before_the_submit_response() {
    let receiver = Receiver::start(None).await;
    let h = start(
        quick()
            .webhook_url(&receiver.url)
            .submit_response_delay(Duration::from_secs(3)),
    )
    .await;
    let url = format!("{}/image/edit/async", h.base_url());
    let body = edit_body("storage://demo/early-8x8.png");
    let pending = tokio::spawn({
        let body = body.clone();
        async move { json_of(post_json(&url, &body).await).await["data"].clone() }
    });
    let got = receiver.wait_for(1).await;
    assert!(!pending.is_finished(), "the webhook came first");
    let task = delivered(&got[0], WebhookBody::Bare);
    assert_eq!((&task["status"], &task["request"]), (&json!("DONE"), &body));
    let accepted = pending.await.expect("submit task");
    assert_eq!(accepted["id"], task["id"]);
}

#[tokio::test]
async fn a_dropped_submit_response_is_still_announced() {
    let receiver = Receiver::start(None).await;
    let h = start(quick().webhook_url(&receiver.url).drop_share(1.0)).await;
    let body = batch_body(json!(["storage://demo/lost-8x8.png"]));
    let sent = client()
        .post(format!("{}/image/edit/batch", h.base_url()))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await;
    assert!(sent.is_err(), "no response");
    let got = receiver.wait_for(1).await;
    let batch = delivered(&got[0], WebhookBody::Bare);
    assert_eq!(
        batch["request"], body,
        "the echo identifies the lost submit"
    );
    assert_eq!(batch["status"], "DONE");
    assert_eq!(h.stats().dropped_responses, 1);
}

#[tokio::test]
async fn undeliverable_webhooks_are_counted_and_block_nothing() {
    // A port nobody listens on.
    let closed = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind");
    let url = format!("http://{}/hook", closed.local_addr().expect("addr"));
    drop(closed);
    let h = start(quick().webhook_url(url)).await;
    for i in 0..3 {
        let accepted = submit(
            &h.base_url(),
            &edit_body(&format!("storage://demo/nf{i}-8x8.png")),
        )
        .await;
        assert_eq!(
            wait_terminal(accepted["result_url"].as_str().expect("url")).await["status"],
            "DONE"
        );
    }
    wait_stats(&h, "3 failed deliveries", |s| s.webhooks_failed == 3).await;
    assert_eq!(h.stats().webhooks_sent, 0);
}

// ---------------------------------------------------------------------------------------------
// Rate-limit windows

/// Four requests late in the first second, then four early in the next, at 4 rps: a fixed
/// window admits all eight (its count restarts at the boundary), a sliding one only the first
/// four (the others fall within a second of them).
#[test]
fn fixed_windows_restart_at_the_boundary_sliding_ones_do_not() {
    let t0 = tokio::time::Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let schedule = [900, 900, 900, 900, 1100, 1100, 1100, 1100];
    for (mode, admitted) in [(RateWindow::Fixed, 8), (RateWindow::Sliding, 4)] {
        let mut limiter = RateLimiter::new(Some(120), Some(4), mode, t0);
        let n = schedule
            .iter()
            .filter(|&&ms| limiter.check(at(ms)).expect("limited").allowed)
            .count();
        assert_eq!(n, admitted, "{mode:?}");
    }
}

#[tokio::test]
async fn fixed_window_mode_sends_the_headers_and_429() {
    let h = start(quick().rate_window(RateWindow::Fixed).rpm(3)).await;
    let url = format!("{}/image/edit/batch/77", h.base_url());
    for remaining in ["2", "1", "0"] {
        let resp = get(&url).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(resp.headers()["ratelimit-limit"], "3, 3;w=60");
        assert_eq!(resp.headers()["ratelimit-remaining"], remaining);
        let reset: u64 = resp.headers()["ratelimit-reset"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("number");
        assert!((1..=60).contains(&reset), "{reset}");
    }
    let refused = get(&url).await;
    assert_eq!(refused.headers()["ratelimit-remaining"], "-1");
    envelope(refused, StatusCode::TOO_MANY_REQUESTS, "2001").await;
    assert_eq!(h.stats().rate_limited, 1);
}

#[test]
fn batch_and_webhook_flags_parse_into_a_scenario() {
    use clap::Parser;
    let cli = Cli::try_parse_from([
        "x",
        "--rate-window",
        "fixed",
        "--batch-parallelism",
        "16",
        "--shuffle-results",
        "--batch-rename-share",
        "0.1",
        "--submit-response-delay",
        "2s",
        "--webhook-url",
        "http://127.0.0.1:8787/webhooks/claid",
        "--webhook-secret",
        "s3cret",
        "--webhook-digest",
        "base64",
        "--webhook-body",
        "wrapped",
        "--webhook-drop-share",
        "0.1",
        "--webhook-duplicate-share",
        "0.2",
        "--webhook-delay-share",
        "0.3",
        "--webhook-delay",
        "5s",
        "--webhook-reorder-share",
        "0.4",
        "--webhook-reorder-hold",
        "1s",
        "--webhook-forged-share",
        "0.5",
    ])
    .expect("parses");
    let s = cli.scenario.into_scenario();
    assert_eq!(s.rate_window, RateWindow::Fixed);
    assert_eq!((s.batch_parallelism, s.shuffle_results), (16, true));
    assert_eq!(s.batch_rename_share, 0.1);
    assert_eq!(s.submit_response_delay, Duration::from_secs(2));
    assert_eq!(
        s.webhook_url.as_deref(),
        Some("http://127.0.0.1:8787/webhooks/claid")
    );
    assert_eq!(s.webhook_secret.as_deref(), Some("s3cret"));
    assert_eq!(
        (s.webhook_digest, s.webhook_body),
        (WebhookDigest::Base64, WebhookBody::Wrapped)
    );
    assert_eq!(
        (
            s.webhook_drop_share,
            s.webhook_duplicate_share,
            s.webhook_delay_share,
            s.webhook_reorder_share,
            s.webhook_forged_share
        ),
        (0.1, 0.2, 0.3, 0.4, 0.5)
    );
    assert_eq!(
        (s.webhook_delay, s.webhook_reorder_hold),
        (Duration::from_secs(5), Duration::from_secs(1))
    );

    let defaults = Cli::try_parse_from(["x"])
        .expect("parses")
        .scenario
        .into_scenario();
    assert_eq!(defaults.rate_window, RateWindow::Sliding);
    assert_eq!(
        defaults.batch_parallelism,
        emulator::DEFAULT_BATCH_PARALLELISM
    );
    assert_eq!(defaults.batch_parallelism, 8);
    assert!(defaults.webhook_url.is_none() && !defaults.shuffle_results);
    assert_eq!(
        (defaults.webhook_digest, defaults.webhook_body),
        (WebhookDigest::Hex, WebhookBody::Bare)
    );
    assert_eq!(defaults.submit_response_delay, Duration::ZERO);
    for bad in [
        ["x", "--webhook-url", "https://example.test/hook"],
        ["x", "--webhook-url", "not a url"],
        ["x", "--batch-parallelism", "0"],
        ["x", "--rate-window", "leaky"],
        ["x", "--webhook-digest", "sha1"],
    ] {
        assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
    }
}
