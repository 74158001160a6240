//! Tests for the emulator: every endpoint on both prefixes, auth and runtime toggles, the
//! error envelope, uploads, tmp_url expiry, every scenario knob and the stats, all through a
//! real HTTP client against `emulator::spawn`.

use std::time::Duration;

use claid_hotfolder::emulator::{self, FaultShares, Handle, Latency, Scenario, ScenarioArgs};
use reqwest::StatusCode;
use serde_json::{Value, json};

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
        json!({"credits_exhausted": false, "forbidden": true, "down": false})
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

    // Without a storage root only the demo storage exists; sync edits answer 400.
    let bare = start(quick()).await;
    let resp = post_json(
        &format!("{}/image/edit", bare.base_url()),
        &edit_body("storage://shop/ok.png"),
    )
    .await;
    let env = envelope(resp, StatusCode::BAD_REQUEST, "1001").await;
    assert!(
        env["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("shop")),
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
