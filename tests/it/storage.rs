//! Object storage and storage connectors (issue 15) against a real S3-protocol server (moto,
//! `support::S3Server`): `objects::ObjectStorage` itself (get, put, head, list, delete inside a
//! prefix), and through the emulator's HTTP API connector CRUD, inputs read from a bucket and
//! outputs written to it (byte-identical to the tmp_url route), batch folder inputs, missing
//! objects, unknown connectors, keys that would leave a connector's prefix, and connectors given
//! in a `--storages` file of the daemon's shape.
//!
//! Tests that need S3 start with `let Some(s3) = S3Server::start().await else { return };`: they
//! are skipped without `moto_server` on the PATH, and fail so under `CI=true`.

use std::time::Duration;

use claid_hotfolder::emulator::{self, Handle, Latency, Scenario, ScenarioArgs, StorageConnector};
use claid_hotfolder::objects::{Credentials, ObjectStorageConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{S3_ACCESS_KEY, S3_SECRET_KEY, S3Server, png};

const KEY: &str = "test-key";
const DEADLINE: Duration = Duration::from_secs(20);

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
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

/// Sends `method url` with `body` (JSON when given); returns the status and the raw text.
async fn call(method: reqwest::Method, url: &str, body: Option<&Value>) -> (StatusCode, String) {
    let mut request = client().request(method, url).bearer_auth(KEY);
    if let Some(body) = body {
        request = request.json(body);
    }
    let resp = request.send().await.expect("request sent");
    let status = resp.status();
    (status, resp.text().await.expect("body"))
}

async fn post(url: &str, body: &Value) -> (StatusCode, Value) {
    let (status, text) = call(reqwest::Method::POST, url, Some(body)).await;
    (status, parse(&text))
}

async fn get(url: &str) -> (StatusCode, Value) {
    let (status, text) = call(reqwest::Method::GET, url, None).await;
    (status, parse(&text))
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The messages of a 422 at `path`, asserting the status and the envelope.
fn problems_at(status: StatusCode, body: &Value, path: &str) -> Vec<String> {
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error_code"], "9000", "{body}");
    body["error_details"][path]
        .as_array()
        .unwrap_or_else(|| panic!("no problem at {path}: {body}"))
        .iter()
        .map(|m| m.as_str().unwrap_or_default().to_owned())
        .collect()
}

fn assert_problem(status: StatusCode, body: &Value, path: &str, needle: &str) {
    let messages = problems_at(status, body, path);
    assert!(
        messages.iter().any(|m| m.contains(needle)),
        "{needle:?} at {path} in {body}"
    );
}

/// Polls an async task or batch until DONE or ERROR; returns its `data`.
async fn wait_terminal(result_url: &str) -> Value {
    let start = tokio::time::Instant::now();
    loop {
        let (status, body) = get(result_url).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let data = body["data"].clone();
        if data["status"] == "DONE" || data["status"] == "ERROR" {
            return data;
        }
        assert!(start.elapsed() < DEADLINE, "{result_url} still {data}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn submit_and_wait(base: &str, endpoint: &str, body: &Value) -> Value {
    let (status, accepted) = post(&format!("{base}/image/edit/{endpoint}"), body).await;
    assert_eq!(status, StatusCode::OK, "{accepted}");
    let result_url = accepted["data"]["result_url"]
        .as_str()
        .expect("result_url")
        .to_owned();
    wait_terminal(&result_url).await
}

async fn download(url: &str) -> Vec<u8> {
    let resp = client().get(url).send().await.expect("download");
    assert_eq!(resp.status(), StatusCode::OK, "{url}");
    resp.bytes().await.expect("bytes").to_vec()
}

/// The body of `POST …/storage/storages` for an s3 connector.
fn s3_storage(name: &str, bucket: &str, path: &str) -> Value {
    json!({"name": name, "type": "s3", "parameters": {
        "bucket": bucket, "path": path,
        "credentials": {"access_key": S3_ACCESS_KEY, "secret_access_key": S3_SECRET_KEY}}})
}

/// Connects an s3 connector through the API; returns its id.
async fn connect(base: &str, name: &str, bucket: &str, path: &str) -> u64 {
    let (status, body) = post(
        &format!("{base}/storage/storages"),
        &s3_storage(name, bucket, path),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"]["id"].as_u64().expect("id")
}

/// A connector whose endpoint is never contacted (nothing listens on port 9).
fn offline_connector(name: &str, secret: &str) -> StorageConnector {
    StorageConnector {
        name: name.to_owned(),
        storage: ObjectStorageConfig {
            bucket: "preset-bucket".to_owned(),
            prefix: "in".to_owned(),
            endpoint: Some("http://127.0.0.1:9".to_owned()),
            region: None,
            access: claid_hotfolder::objects::Access::S3(Credentials::new("PRESETKEY", secret)),
        },
    }
}

fn image_width(bytes: &[u8]) -> u32 {
    image::load_from_memory(bytes).expect("an image").width()
}

#[tokio::test]
async fn storage_connectors_are_created_listed_updated_and_deleted() {
    const PRESET_SECRET: &str = "preset-secret-never-shown";
    let h = start(
        quick()
            .storage(offline_connector("preset", PRESET_SECRET))
            .storage_endpoint("http://127.0.0.1:9"),
    )
    .await;
    let mut texts = Vec::new();
    for prefix in ["/v1", "/v1-beta1"] {
        let (status, text) = call(
            reqwest::Method::GET,
            &format!("http://{}{prefix}/storage/storage-types", h.addr()),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(parse(&text)["data"], json!(["web_folder", "s3", "gcs"]));
    }
    let base = h.base_url();
    let storages = format!("{base}/storage/storages");
    // Without a key: 401, as every API endpoint.
    let resp = client().get(&storages).send().await.expect("sent");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // The connector given up front is id 1.
    let (status, text) = call(reqwest::Method::GET, &storages, None).await;
    assert_eq!(status, StatusCode::OK);
    let listed = parse(&text)["data"].clone();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(
        (
            listed[0]["id"].clone(),
            listed[0]["name"].clone(),
            listed[0]["type"].clone()
        ),
        (json!(1), json!("preset"), json!("s3"))
    );
    assert_eq!(
        listed[0]["parameters"],
        json!({"bucket": "preset-bucket", "path": "in", "credentials": {"access_key": "PRESETKEY"}})
    );
    texts.push(text);

    // Create: the path loses its slashes, the answer never carries the secret.
    let (status, text) = call(
        reqwest::Method::POST,
        &storages,
        Some(&s3_storage("cat", "catalog", "/shop/")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let created = parse(&text)["data"].clone();
    assert_eq!(created["id"], 2);
    assert_eq!(
        created["parameters"],
        json!({"bucket": "catalog", "path": "shop", "credentials": {"access_key": S3_ACCESS_KEY}})
    );
    assert!(
        created["created_at"]
            .as_str()
            .is_some_and(|t| t.contains('T')),
        "{created}"
    );
    texts.push(text);

    // Invalid bodies: 422 keyed by field path; a taken name too.
    let (status, body) = post(&storages, &s3_storage("cat", "other", "")).await;
    assert_problem(status, &body, "name", "already exists");
    let (status, body) = post(
        &storages,
        &json!({"name": "x", "type": "s3", "parameters": {"bucket": "b", "credentials": {"access_key": "A"}}}),
    )
    .await;
    assert_problem(
        status,
        &body,
        "parameters.credentials.secret_access_key",
        "field required",
    );
    let (status, body) = post(&storages, &json!({"type": "ftp", "extra": 1})).await;
    for path in ["name", "type", "parameters", "extra"] {
        problems_at(status, &body, path);
    }
    let (status, body) = post(&storages, &json!([1])).await;
    problems_at(status, &body, "body");

    // Get, on the other prefix too.
    let (status, text) = call(
        reqwest::Method::GET,
        &format!("http://{}/v1-beta1/storage/storages/2", h.addr()),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(parse(&text)["data"], created);
    texts.push(text);
    let (status, body) = get(&format!("{storages}/99")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error_message"], "Storage not found.");
    let (status, body) = get(&format!("{storages}/abc")).await;
    problems_at(status, &body, "storage_id");

    // Update: the name and the path change, the bucket and keys stay.
    let (status, text) = call(
        reqwest::Method::PATCH,
        &format!("{storages}/2"),
        Some(&json!({"name": "cat2", "parameters": {"path": "out"}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let updated = parse(&text)["data"].clone();
    assert_eq!(
        (updated["id"].clone(), updated["name"].clone()),
        (json!(2), json!("cat2"))
    );
    assert_eq!(
        updated["parameters"],
        json!({"bucket": "catalog", "path": "out", "credentials": {"access_key": S3_ACCESS_KEY}})
    );
    texts.push(text);
    let (status, text) = call(
        reqwest::Method::PATCH,
        &format!("{storages}/2"),
        Some(&json!({"name": "preset"})),
    )
    .await;
    problems_at(status, &parse(&text), "name");
    let (status, text) = call(
        reqwest::Method::PATCH,
        &format!("{storages}/2"),
        Some(&json!({"parameters": {"bucket": ""}})),
    )
    .await;
    problems_at(status, &parse(&text), "parameters.bucket");
    let (status, text) = call(
        reqwest::Method::PATCH,
        &format!("{storages}/99"),
        Some(&json!({"name": "z"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{text}");

    // Delete: answered with the disconnected storage, then gone.
    let (status, text) = call(reqwest::Method::DELETE, &format!("{storages}/2"), None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(parse(&text)["data"]["name"], "cat2");
    texts.push(text);
    let (status, _) = call(reqwest::Method::DELETE, &format!("{storages}/2"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get(&format!("{storages}/2")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, text) = call(reqwest::Method::GET, &storages, None).await;
    let names: Vec<Value> = parse(&text)["data"]
        .as_array()
        .expect("list")
        .iter()
        .map(|s| s["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("preset")]);
    texts.push(text);

    for text in &texts {
        assert!(
            !text.contains(S3_SECRET_KEY) && !text.contains(PRESET_SECRET),
            "a secret key was answered: {text}"
        );
    }
    let stats = h.stats();
    assert_eq!(
        (
            stats.storage_reads,
            stats.storage_writes,
            stats.storage_lists
        ),
        (0, 0, 0),
        "managing connectors touches no bucket"
    );
}

#[tokio::test]
async fn a_storage_input_is_read_and_its_output_written_byte_identical_to_the_tmp_url() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    s3.create_bucket("catalog").await;
    let input = png(64, 48);
    s3.put_object("catalog", "shop/shoes/sku-1.png", &input)
        .await;
    let h = start(quick().storage_endpoint(&s3.endpoint)).await;
    let base = h.base_url();
    connect(&base, "cat", "catalog", "shop").await;
    let uri = "storage://cat/shoes/sku-1.png";
    let ops = json!({"resizing": {"width": 32}});

    // The same edit through a tmp_url…
    let via_tmp = submit_and_wait(
        &base,
        "async",
        &json!({"input": uri, "operations": ops, "output": {"format": "png"}}),
    )
    .await;
    assert_eq!(via_tmp["status"], "DONE", "{via_tmp}");
    let expected = download(
        via_tmp["result"]["output_object"]["tmp_url"]
            .as_str()
            .expect("tmp_url"),
    )
    .await;
    assert_eq!(image_width(&expected), 32);

    // …and into the bucket (async, a key).
    let done = submit_and_wait(
        &base,
        "async",
        &json!({"input": uri, "operations": ops,
                "output": {"format": "png", "destination": "storage://cat/out/sku-1.png"}}),
    )
    .await;
    assert_eq!(done["status"], "DONE", "{done}");
    let output = &done["result"]["output_object"];
    assert_eq!(output["object_key"], "shop/out/sku-1.png", "{output}");
    assert_eq!(output["object_bucket"], "catalog");
    assert_eq!(output["object_uri"], "s3://catalog/shop/out/sku-1.png");
    assert_eq!(output["claid_storage_uri"], "storage://cat/out/sku-1.png");
    assert!(output.get("tmp_url").is_none(), "{output}");
    assert_eq!(
        s3.get_object("catalog", "shop/out/sku-1.png")
            .await
            .as_deref(),
        Some(expected.as_slice())
    );
    // One object, written whole: nothing else appeared under the folder.
    assert_eq!(
        s3.list_keys("catalog", "shop/out/").await,
        ["shop/out/sku-1.png"]
    );

    // Sync, into a folder: the output is named after the input.
    let (status, body) = post(
        &format!("{base}/image/edit"),
        &json!({"input": uri, "operations": ops,
                "output": {"format": "png", "destination": "storage://cat/sync/"}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["output"]["object_key"], "shop/sync/sku-1.png");
    assert_eq!(
        s3.get_object("catalog", "shop/sync/sku-1.png")
            .await
            .as_deref(),
        Some(expected.as_slice())
    );

    // The string shorthand (jpeg by default) matches a jpeg tmp_url edit.
    let (status, body) = post(
        &format!("{base}/image/edit"),
        &json!({"input": uri, "operations": ops}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let jpeg = download(body["data"]["output"]["tmp_url"].as_str().expect("tmp_url")).await;
    let (status, body) = post(
        &format!("{base}/image/edit"),
        &json!({"input": uri, "operations": ops, "output": "storage://cat/short/sku-1.jpg"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"]["output"]["claid_storage_uri"],
        "storage://cat/short/sku-1.jpg"
    );
    assert_eq!(
        s3.get_object("catalog", "shop/short/sku-1.jpg")
            .await
            .as_deref(),
        Some(jpeg.as_slice())
    );

    // An upload into a folder: named after the uploaded file.
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(input.clone()).file_name("sku-1.png"),
        )
        .text(
            "data",
            json!({"operations": ops, "output": {"format": "png", "destination": "storage://cat/up/"}})
                .to_string(),
        );
    let resp = client()
        .post(format!("{base}/image/edit/upload"))
        .bearer_auth(KEY)
        .multipart(form)
        .send()
        .await
        .expect("upload");
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["data"]["output"]["object_key"], "shop/up/sku-1.png");
    assert_eq!(
        s3.get_object("catalog", "shop/up/sku-1.png")
            .await
            .as_deref(),
        Some(expected.as_slice())
    );

    // Counted exactly: 5 inputs read from the bucket, 4 outputs written to it.
    let stats = h.stats();
    assert_eq!(stats.storage_reads, 5);
    assert_eq!(stats.storage_read_bytes, 5 * input.len() as u64);
    assert_eq!(stats.storage_writes, 4);
    assert_eq!(
        stats.storage_written_bytes,
        (3 * expected.len() + jpeg.len()) as u64
    );
    assert_eq!(stats.storage_errors, 0);
    s3.stop().await;
}

#[tokio::test]
async fn a_batch_over_a_storage_folder_takes_its_images_recursively_or_not() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    s3.create_bucket("catalog").await;
    for (key, width) in [
        ("shop/raw/a.png", 40),
        ("shop/raw/b.PNG", 50),
        ("shop/raw/sub/c.png", 60),
        ("shop/rawer/d.png", 70),
        ("shop/other/e.png", 80),
    ] {
        s3.put_object("catalog", key, &png(width, 30)).await;
    }
    s3.put_object("catalog", "shop/raw/notes.txt", b"not an image")
        .await;
    let h = start(quick().storage(s3.connector("cat", "catalog", "shop"))).await;
    let base = h.base_url();
    let ops = json!({"resizing": {"width": 20}});

    // Direct children only; outputs under the destination folder, named after their inputs.
    let flat = submit_and_wait(
        &base,
        "batch",
        &json!({"input": {"source": "storage://cat/raw/", "recursive": false}, "operations": ops,
                "output": {"format": "png", "destination": "storage://cat/out-flat/"}}),
    )
    .await;
    assert_eq!(flat["status"], "DONE", "{flat}");
    assert!(
        flat["errors"].as_array().is_some_and(Vec::is_empty),
        "{flat}"
    );
    let mut uris: Vec<String> = flat["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            assert!(r["output_object"].get("tmp_url").is_none(), "{r}");
            r["output_object"]["claid_storage_uri"]
                .as_str()
                .expect("claid_storage_uri")
                .to_owned()
        })
        .collect();
    uris.sort();
    assert_eq!(
        uris,
        [
            "storage://cat/out-flat/a.png",
            "storage://cat/out-flat/b.png"
        ]
    );
    assert_eq!(
        s3.list_keys("catalog", "shop/out-flat/").await,
        ["shop/out-flat/a.png", "shop/out-flat/b.png"]
    );

    // Every descendant; a destination without its trailing slash is a folder all the same.
    let deep = submit_and_wait(
        &base,
        "batch",
        &json!({"input": {"source": "storage://cat/raw", "recursive": true}, "operations": ops,
                "output": {"format": "png", "destination": "storage://cat/out-deep"}}),
    )
    .await;
    assert_eq!(deep["status"], "DONE", "{deep}");
    assert_eq!(deep["results"].as_array().map(Vec::len), Some(3), "{deep}");
    let keys = s3.list_keys("catalog", "shop/out-deep/").await;
    assert_eq!(
        keys,
        [
            "shop/out-deep/a.png",
            "shop/out-deep/b.png",
            "shop/out-deep/c.png"
        ]
    );
    for key in &keys {
        let bytes = s3.get_object("catalog", key).await.expect("written");
        assert_eq!(image_width(&bytes), 20, "{key}");
    }

    // The string form is non-recursive; without a destination the outputs get tmp_urls.
    let plain = submit_and_wait(
        &base,
        "batch",
        &json!({"input": "storage://cat/raw/", "operations": ops, "output": {"format": "png"}}),
    )
    .await;
    let mut names: Vec<String> = plain["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            let url = r["output_object"]["tmp_url"].as_str().expect("tmp_url");
            url.rsplit('/').next().unwrap_or_default().to_owned()
        })
        .collect();
    names.sort();
    assert_eq!(names, ["a.png", "b.png"]);

    // A folder with no image is refused.
    let (status, body) = post(
        &format!("{base}/image/edit/batch"),
        &json!({"input": "storage://cat/empty/", "operations": {}}),
    )
    .await;
    assert_problem(status, &body, "input", "holds no images");

    let stats = h.stats();
    assert_eq!(stats.storage_lists, 4);
    assert_eq!((stats.storage_reads, stats.storage_writes), (7, 5));
    assert_eq!(stats.batch_images, 7);
    s3.stop().await;
}

#[tokio::test]
async fn a_missing_object_or_bucket_fails_the_task_or_the_sync_edit() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    s3.create_bucket("catalog").await;
    s3.put_object("catalog", "shop/here.png", &png(20, 20))
        .await;
    let h = start(
        quick()
            .storage(s3.connector("cat", "catalog", "shop"))
            .storage(s3.connector("gone", "absent", "")),
    )
    .await;
    let base = h.base_url();
    let missing = "s3://catalog/shop/missing.png";

    // Async: the submit is accepted (like an unreachable URL), the task ends in ERROR.
    let task = submit_and_wait(
        &base,
        "async",
        &json!({"input": "storage://cat/missing.png", "operations": {}}),
    )
    .await;
    assert_eq!(task["status"], "ERROR", "{task}");
    let error = task["errors"][0]["error"].as_str().expect("error text");
    assert!(
        error.contains(missing) && error.contains("not found"),
        "{error}"
    );

    // Sync: 400, code 1001, naming the object.
    let (status, body) = post(
        &format!("{base}/image/edit"),
        &json!({"input": "storage://cat/missing.png", "operations": {}}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error_code"], "1001");
    assert!(
        body["error_message"]
            .as_str()
            .is_some_and(|m| m.contains(missing)),
        "{body}"
    );

    // Batch: the image that exists is done, the missing one is in errors.
    let batch = submit_and_wait(
        &base,
        "batch",
        &json!({"input": ["storage://cat/here.png", "storage://cat/missing.png"], "operations": {}}),
    )
    .await;
    assert_eq!(batch["status"], "DONE", "{batch}");
    assert_eq!(batch["results"].as_array().map(Vec::len), Some(1));
    let error = batch["errors"][0]["error"].as_str().expect("error text");
    assert!(
        error.starts_with("storage://cat/missing.png: ") && error.contains("not found"),
        "{error}"
    );
    let stats = h.stats();
    assert_eq!((stats.storage_errors, stats.storage_reads), (3, 1));

    // An output that cannot be written (its bucket does not exist) fails the same way: 400,
    // code 1003, naming the object; and no object appears.
    let (status, body) = post(
        &format!("{base}/image/edit"),
        &json!({"input": "storage://cat/here.png", "operations": {}, "output": "storage://gone/out/"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        (body["error_code"].clone(), body["error_type"].clone()),
        (json!("1003"), json!("storage"))
    );
    assert!(
        body["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("cannot write s3://absent/out/here.jpg")),
        "{body}"
    );
    let task = submit_and_wait(
        &base,
        "async",
        &json!({"input": "storage://cat/here.png", "operations": {}, "output": "storage://gone/a.jpg"}),
    )
    .await;
    assert_eq!(task["status"], "ERROR", "{task}");
    assert_eq!(h.stats().storage_writes, 0);
    assert_eq!(h.stats().storage_errors, 5);

    // A connector called demo replaces the built-in synthetic images.
    let (status, _) = post(
        &format!("{base}/image/edit"),
        &json!({"input": "storage://demo/a-16x16.png", "operations": {}}),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "no connector called demo: synthesized"
    );
    let shadowed = start(quick().storage(s3.connector("demo", "catalog", "shop"))).await;
    let (status, body) = post(
        &format!("{}/image/edit", shadowed.base_url()),
        &json!({"input": "storage://demo/a-16x16.png", "operations": {}}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error_message"]
            .as_str()
            .is_some_and(|m| m.contains("s3://catalog/shop/a-16x16.png")),
        "{body}"
    );
    s3.stop().await;
}

#[tokio::test]
async fn an_unknown_connector_is_refused_with_422_and_creates_nothing() {
    let h = start(quick().storage(offline_connector("cat", "s"))).await;
    let base = h.base_url();
    let not_connected = "storage \"nowhere\" is not connected";
    for endpoint in ["async", ""] {
        let url = format!("{base}/image/edit/{endpoint}");
        let url = url.trim_end_matches('/');
        let (status, body) = post(
            url,
            &json!({"input": "storage://nowhere/a.png", "operations": {}}),
        )
        .await;
        assert_problem(status, &body, "input", not_connected);
        let (status, body) = post(
            url,
            &json!({"input": "storage://demo/a-8x8.png", "operations": {},
                    "output": {"destination": "storage://nowhere/out/"}}),
        )
        .await;
        assert_problem(status, &body, "output.destination", not_connected);
        // The built-in demo storage is read-only.
        let (status, body) = post(
            url,
            &json!({"input": "storage://demo/a-8x8.png", "operations": {},
                    "output": "storage://demo/out/a.png"}),
        )
        .await;
        assert_problem(status, &body, "output.destination", "read-only");
    }
    let batch = format!("{base}/image/edit/batch");
    let (status, body) = post(
        &batch,
        &json!({"input": ["storage://demo/a-8x8.png", "storage://nowhere/b.png"], "operations": {}}),
    )
    .await;
    assert_problem(status, &body, "input.1", not_connected);
    let (status, body) = post(
        &batch,
        &json!({"input": {"source": "storage://nowhere/f/"}, "operations": {}}),
    )
    .await;
    assert_problem(status, &body, "input.source", not_connected);
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(png(8, 8)).file_name("a.png"),
        )
        .text(
            "data",
            json!({"operations": {}, "output": {"destination": "storage://nowhere/x.png"}})
                .to_string(),
        );
    let resp = client()
        .post(format!("{base}/image/edit/upload"))
        .bearer_auth(KEY)
        .multipart(form)
        .send()
        .await
        .expect("upload");
    let status = resp.status();
    let body: Value = resp.json().await.expect("json");
    assert_problem(status, &body, "output.destination", not_connected);

    let stats = h.stats();
    assert_eq!(
        (
            stats.submits,
            stats.batch_submits,
            stats.sync_edits,
            stats.uploads
        ),
        (0, 0, 0, 0),
        "nothing was created or billed"
    );
    assert_eq!(stats.storage_reads + stats.storage_errors, 0);
}

#[tokio::test]
async fn keys_that_would_leave_the_connector_prefix_are_refused() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    s3.create_bucket("catalog").await;
    s3.put_object("catalog", "secret.png", &png(10, 10)).await;
    s3.put_object("catalog", "shop/ok.png", &png(10, 10)).await;
    let h = start(
        quick()
            .storage(s3.connector("cat", "catalog", "shop"))
            .storage_endpoint(&s3.endpoint),
    )
    .await;
    let base = h.base_url();
    for input in [
        "storage://cat/../secret.png",
        "storage://cat/a/../../secret.png",
        "storage://cat//secret.png",
        "storage://cat/./ok.png",
    ] {
        for endpoint in ["/async", ""] {
            let (status, body) = post(
                &format!("{base}/image/edit{endpoint}"),
                &json!({"input": input, "operations": {}}),
            )
            .await;
            assert_problem(status, &body, "input", "cannot be used");
        }
    }
    let (status, body) = post(
        &format!("{base}/image/edit"),
        &json!({"input": "storage://cat/ok.png", "operations": {},
                "output": "storage://cat/../escaped.jpg"}),
    )
    .await;
    assert_problem(
        status,
        &body,
        "output.destination",
        "never leave the prefix",
    );
    let (status, body) = post(
        &format!("{base}/image/edit/batch"),
        &json!({"input": {"source": "storage://cat/../", "recursive": true}, "operations": {}}),
    )
    .await;
    assert_problem(status, &body, "input.source", "never leave the prefix");
    // Nor can a connector's own prefix climb out.
    let (status, body) = post(
        &format!("{base}/storage/storages"),
        &s3_storage("up", "catalog", "shop/../.."),
    )
    .await;
    problems_at(status, &body, "parameters.path");

    // The refusals read and wrote nothing; a path inside the prefix works.
    let stats = h.stats();
    assert_eq!(
        (stats.storage_reads, stats.storage_writes, stats.submits),
        (0, 0, 0)
    );
    let (status, body) = post(
        &format!("{base}/image/edit"),
        &json!({"input": "storage://cat/ok.png", "operations": {}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(h.stats().storage_reads, 1);
    assert_eq!(
        s3.list_keys("catalog", "").await,
        ["secret.png", "shop/ok.png"],
        "nothing was written"
    );
    s3.stop().await;
}

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    scenario: ScenarioArgs,
}

#[tokio::test]
async fn a_storages_file_in_the_daemon_shape_connects_its_buckets() {
    use clap::Parser;
    // A file that cannot be read is refused when the flag is parsed, naming the file.
    let err = Cli::try_parse_from(["x", "--storages", "/nonexistent/storages.yaml"])
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("/nonexistent/storages.yaml") && err.contains("ENOENT"),
        "{err}"
    );

    let Some(s3) = S3Server::start().await else {
        return;
    };
    s3.create_bucket("catalog").await;
    let input = png(30, 20);
    s3.put_object("catalog", "shop/in.png", &input).await;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("s3.yaml"),
        format!("access_key_id: {S3_ACCESS_KEY}\nsecret_access_key: {S3_SECRET_KEY}\n"),
    )
    .expect("credentials file");
    let file = dir.path().join("config.yaml");
    std::fs::write(
        &file,
        format!(
            "api: {{ base_url: embedded }}\nstorages:\n  catalog:\n    claid_name: cat\n    url: s3://catalog/shop/\n    endpoint: {}\n    region: us-east-1\n    credentials_file: s3.yaml\n",
            s3.endpoint
        ),
    )
    .expect("storages file");
    let file = file.to_str().expect("utf-8 path");
    let cli = Cli::try_parse_from([
        "x",
        "--storages",
        file,
        "--rps",
        "0",
        "--rpm",
        "0",
        "--latency",
        "fixed:10ms",
    ])
    .expect("parses");
    let h = start(cli.scenario.into_scenario()).await;
    let base = h.base_url();
    let (status, body) = get(&format!("{base}/storage/storages/1")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"]["parameters"],
        json!({"bucket": "catalog", "path": "shop", "credentials": {"access_key": S3_ACCESS_KEY}})
    );
    assert_eq!(body["data"]["name"], "cat");

    let (status, body) = post(
        &format!("{base}/image/edit"),
        &json!({"input": "storage://cat/in.png", "operations": {}, "output": "storage://cat/out/"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["output"]["object_key"], "shop/out/in.jpg");
    let written = s3
        .get_object("catalog", "shop/out/in.jpg")
        .await
        .expect("written");
    assert_eq!(
        image::load_from_memory(&written).map(|i| i.width()).ok(),
        Some(30)
    );
    assert_eq!((h.stats().storage_reads, h.stats().storage_writes), (1, 1));
    s3.stop().await;
}

#[tokio::test]
async fn a_write_into_a_bucket_that_does_not_exist_says_so() {
    use claid_hotfolder::objects::ObjectStorage;
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let storage = ObjectStorage::new(&s3.connector("cat", "no-such-bucket", "shop").storage)
        .expect("storage");
    let err = storage
        .put("staging/a.png", bytes::Bytes::from_static(b"12345"))
        .await
        .expect_err("no bucket");
    let text = err.to_string();
    assert!(
        text.contains("the bucket no-such-bucket does not exist")
            && !text.contains("object not found"),
        "{text}"
    );
    assert_eq!(err.code(), "object-storage-io");
    s3.stop().await;
}

#[tokio::test]
async fn object_storage_reads_writes_lists_and_deletes_inside_its_prefix() {
    use claid_hotfolder::objects::ObjectStorage;
    let Some(s3) = S3Server::start().await else {
        return;
    };
    s3.create_bucket("catalog").await;
    s3.put_object("catalog", "outside.png", b"not ours").await;
    let storage =
        ObjectStorage::new(&s3.connector("cat", "catalog", "/shop/").storage).expect("storage");
    assert_eq!(storage.prefix(), "shop");

    let info = storage
        .put("a/one.bin", bytes::Bytes::from_static(b"12345"))
        .await
        .expect("put");
    assert_eq!((info.key.as_str(), info.size), ("a/one.bin", 5));
    storage
        .put("a/b/two.bin", bytes::Bytes::from_static(b"xy"))
        .await
        .expect("put");
    storage
        .put("three.bin", bytes::Bytes::from_static(b"z"))
        .await
        .expect("put");
    assert_eq!(
        s3.get_object("catalog", "shop/a/one.bin").await.as_deref(),
        Some(&b"12345"[..])
    );
    // Over 8 MiB, written in parts of 5 MiB (a multipart ETag counts them: `-3`), read back
    // whole and identical.
    let big: Vec<u8> = (0..12 * 1024 * 1024 + 7).map(|i| (i % 251) as u8).collect();
    let info = storage
        .put("big.bin", bytes::Bytes::from(big.clone()))
        .await
        .expect("put in parts");
    assert_eq!(info.size, big.len() as u64);
    assert!(
        info.e_tag
            .as_deref()
            .is_some_and(|tag| tag.trim_matches('"').ends_with("-3")),
        "{:?}",
        info.e_tag
    );
    assert_eq!(
        s3.get_object("catalog", "shop/big.bin").await.as_deref(),
        Some(&big[..])
    );
    storage.delete("big.bin").await.expect("delete");
    let head = storage.head("a/one.bin").await.expect("head");
    assert_eq!(head.size, 5);
    assert!(head.last_modified.is_some());
    let keys = |infos: Vec<claid_hotfolder::objects::ObjectInfo>| {
        infos.into_iter().map(|i| i.key).collect::<Vec<_>>()
    };
    assert_eq!(
        keys(storage.list("a/", false).await.expect("list")),
        ["a/one.bin"]
    );
    assert_eq!(
        keys(storage.list("a", true).await.expect("list")),
        ["a/b/two.bin", "a/one.bin"]
    );
    assert_eq!(
        keys(storage.list("", true).await.expect("list")),
        ["a/b/two.bin", "a/one.bin", "three.bin"],
        "the whole prefix, and nothing outside it"
    );
    assert_eq!(
        storage.get("a/one.bin", 5).await.expect("get").as_ref(),
        b"12345"
    );
    let too_large = storage.get("a/one.bin", 4).await.expect_err("over the cap");
    assert_eq!(too_large.code(), "object-too-large", "{too_large}");

    storage.delete("a/one.bin").await.expect("delete");
    storage
        .delete("a/one.bin")
        .await
        .expect("deleting twice is fine");
    let gone = storage.head("a/one.bin").await.expect_err("deleted");
    assert_eq!(gone.code(), "object-not-found");
    assert!(
        gone.to_string()
            .contains("cannot head s3://catalog/shop/a/one.bin: object not found"),
        "{gone}"
    );
    let missing = storage.get("nope.png", 100).await.expect_err("missing");
    assert_eq!(missing.code(), "object-not-found", "{missing}");

    // Keys that would leave the prefix are refused before any request.
    for key in ["../outside.png", "a/../../outside.png", "/outside.png", ""] {
        let err = storage.get(key, 100).await.expect_err(key);
        assert_eq!(err.code(), "object-unsafe-key", "{key}: {err}");
        let err = storage
            .put(key, bytes::Bytes::from_static(b"x"))
            .await
            .expect_err(key);
        assert_eq!(err.code(), "object-unsafe-key", "{key}: {err}");
    }
    assert_eq!(
        s3.get_object("catalog", "outside.png").await.as_deref(),
        Some(&b"not ours"[..])
    );

    // An unreachable server: the error names the object and the OS cause.
    let mut offline = s3.connector("cat", "catalog", "").storage;
    offline.endpoint = Some(format!("http://127.0.0.1:{}", crate::support::free_port()));
    let err = ObjectStorage::new(&offline)
        .expect("storage")
        .head("x.png")
        .await
        .expect_err("nothing listens");
    assert_eq!(err.code(), "object-storage-io", "{err}");
    let text = err.to_string();
    assert!(
        text.contains("cannot head s3://catalog/x.png") && text.contains("ECONNREFUSED"),
        "{text}"
    );
    s3.stop().await;
}

/// An object copied from where a moved connector pointed (issue 15): within one bucket by the
/// server, across buckets read and written again, and either way served with the
/// `Content-Type` it had (across buckets the copy was served as `binary/octet-stream`, a
/// download instead of an image behind a CDN). Big ones too (written in parts).
#[tokio::test]
async fn an_object_copied_from_a_former_place_keeps_its_bytes_and_content_type() {
    use claid_hotfolder::objects::ObjectStorage;
    let Some(s3) = S3Server::start().await else {
        return;
    };
    for bucket in ["old", "new"] {
        s3.create_bucket(bucket).await;
    }
    let big: Vec<u8> = (0..9 * 1024 * 1024 + 3).map(|i| (i % 253) as u8).collect();
    s3.put_object_typed("old", "shop/x.png", b"png bytes", "image/png")
        .await;
    s3.put_object_typed("old", "shop/big.webp", &big, "image/webp")
        .await;
    let storage = |bucket: &str, prefix: &str| {
        ObjectStorage::new(&s3.connector("cat", bucket, prefix).storage).expect("storage")
    };
    let former = storage("old", "shop");
    for (here, bucket, prefix) in [
        (storage("old", "moved"), "old", "moved"),
        (storage("new", "shop"), "new", "shop"),
    ] {
        for (key, bytes, content_type) in [
            ("x.png", &b"png bytes"[..], "image/png"),
            ("big.webp", &big[..], "image/webp"),
        ] {
            let info = here
                .copy_from(&former, key, 64 << 20)
                .await
                .unwrap_or_else(|err| panic!("{bucket}/{prefix}/{key}: {err}"));
            assert_eq!(info.size, bytes.len() as u64, "{bucket}/{prefix}/{key}");
            let full = format!("{prefix}/{key}");
            assert_eq!(
                s3.get_object(bucket, &full).await.as_deref(),
                Some(bytes),
                "{bucket}/{full}"
            );
            assert_eq!(
                s3.content_type(bucket, &full).await.as_deref(),
                Some(content_type),
                "{bucket}/{full}"
            );
        }
    }
    s3.stop().await;
}

mod daemon;

/// A server in front of the bucket that ignores `Range` (HTTP allows it: it answers 200 with
/// the whole object): a ranged read takes its part of the whole answer instead of failing
/// (every billed output's check failed at once as `storage-unreachable`).
#[tokio::test]
async fn a_ranged_read_from_a_server_that_ignores_range_takes_its_part_of_the_whole() {
    use claid_hotfolder::objects::ObjectStorage;
    let object: Vec<u8> = (0..40_000u32).map(|i| (i % 253) as u8).collect();
    let served = object.clone();
    let (endpoint, server) = crate::support::raw_http_server(move |head| {
        let mut answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\netag: \"e1\"\r\nlast-modified: Tue, 01 Dec 2026 00:00:00 GMT\r\nconnection: close\r\n\r\n",
            served.len()
        )
        .into_bytes();
        if head.starts_with(b"GET") {
            answer.extend_from_slice(&served);
        }
        answer
    })
    .await;
    let storage = ObjectStorage::new(&ObjectStorageConfig {
        bucket: "catalog".to_owned(),
        prefix: "raw".to_owned(),
        endpoint: Some(endpoint),
        region: None,
        access: claid_hotfolder::objects::Access::S3(Credentials::new("KEY", "SECRET")),
    })
    .expect("storage");
    for range in [0..16_384u64, 30_000..40_000, 39_990..40_000] {
        let part = storage
            .get_range("out/a.jpg", range.clone())
            .await
            .unwrap_or_else(|err| panic!("{range:?}: {err}"));
        assert_eq!(
            part.as_ref(),
            &object[range.start as usize..range.end as usize],
            "{range:?}"
        );
    }
    server.abort();
}
