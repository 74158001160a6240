//! The daemon's side of issue 15, through the real binary against the emulator and moto: the
//! `storages` config (errors naming the key and the fix, never a secret), the checks of
//! `validate` and of the daemon's start (the connector exists on Claid's side, the prefix can be
//! listed) with the exit code of each cause, storage inputs and outputs, and staging.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use claid_hotfolder::config;
use claid_hotfolder::emulator::{Latency, Scenario};

use crate::support::{S3_ACCESS_KEY, S3_SECRET_KEY, S3Server, TestEnv, cli};

/// `http://127.0.0.1:PORT` where nothing listens.
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    format!("http://127.0.0.1:{port}")
}

fn quick() -> Scenario {
    Scenario::default()
        .latency(Latency::Fixed(std::time::Duration::from_millis(20)))
        .seed(7)
}

/// A credentials file of the daemon's shape in `dir`.
fn credentials_file(dir: &Path) -> PathBuf {
    let path = dir.join("s3-keys.yaml");
    std::fs::write(
        &path,
        format!("access_key_id: {S3_ACCESS_KEY}\nsecret_access_key: {S3_SECRET_KEY}\n"),
    )
    .expect("credentials file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("mode");
    path
}

/// The `storages:` section for one storage `catalog` → connector `claid_name`.
fn storages_yaml(claid_name: &str, url: &str, endpoint: &str, credentials: &Path) -> String {
    format!(
        "storages:\n  catalog:\n    claid_name: {claid_name}\n    url: {url}\n    endpoint: {endpoint}\n    credentials_file: {}\n",
        credentials.display()
    )
}

#[test]
fn storage_config_errors_name_the_key_and_the_fix() {
    let origin = Path::new("/etc/claid-hotfolder/c.yaml");
    let base = "folders: { inbox: /i, outbox: /o, archive: /a, rejected: /r, state: /s }\n";
    let cases = [
        (
            "storages:\n  catalog:\n    claid_name: c\n    url: http://bucket/p\n",
            "storages.catalog.url",
            "s3://",
        ),
        (
            "storages:\n  catalog:\n    url: s3://bucket/p\n",
            "storages.catalog.claid_name",
            "connector",
        ),
        (
            "storages:\n  catalog:\n    claid_name: c\n",
            "storages.catalog.url",
            "s3://bucket/prefix",
        ),
        (
            "storages:\n  catalog:\n    claid_name: c\n    url: s3://bkt\n    endpoint: ftp://x\n",
            "storages.catalog.endpoint",
            "http(s)",
        ),
        (
            "storages:\n  catalog:\n    claid_name: c\n    url: s3://bkt\n    endpoint: http://127.0.0.1:9000/bkt\n",
            "storages.catalog.endpoint",
            "after the server `http://127.0.0.1:9000`: give the server alone",
        ),
        (
            "storages:\n  catalog:\n    claid_name: c\n    url: s3://bkt\n    endpoint: \"http://127.0.0.1:9000/?X-Amz-Security-Token=SECRETTOKEN\"\n",
            "storages.catalog.endpoint",
            "the bucket and prefix go in `url`",
        ),
        (
            "storages:\n  catalog:\n    claid_name: c\n    url: s3://bkt\n    bucket: b\n",
            "storages.catalog.bucket",
            "unknown key",
        ),
        (
            "storages:\n  catalog:\n    claid_name: c\n    url: s3://bkt\n    region: us east 1\n",
            "storages.catalog.region",
            "expected a region like `us-east-1`, found `us east 1`",
        ),
        (
            "storages:\n  cat.alog:\n    claid_name: c\n    url: s3://bkt\n",
            "storages.cat.alog",
            "letters, digits",
        ),
        (
            "storages:\n  a: { claid_name: c, url: s3://bkt/x }\n  b: { claid_name: c, url: s3://bkt/y }\n",
            "storages.b.claid_name",
            "also the connector",
        ),
        (
            "api:\n  staging: catalog\nstorages:\n  catalog: { claid_name: c, url: s3://bkt/x }\nprofiles:\n  stg: { output: { destination: storage://catalog/staging/ } }\n",
            "profiles.stg.output.destination",
            "is in the `staging/` folder of the storage `catalog`",
        ),
        // Without its `/`: told it is in the staging area, not to add the `/` (that fix was
        // refused in turn).
        (
            "api:\n  staging: catalog\nstorages:\n  catalog: { claid_name: c, url: s3://bkt/x }\nprofiles:\n  stg: { output: { destination: storage://catalog/staging } }\n",
            "profiles.stg.output.destination",
            "is in the `staging/` folder of the storage `catalog`",
        ),
        (
            "api:\n  staging: nope\nstorages:\n  catalog: { claid_name: c, url: s3://bkt/x }\n",
            "api.staging",
            "use one of `catalog`",
        ),
        (
            "profiles:\n  p:\n    output:\n      destination: storage://nope/out/\nstorages:\n  catalog: { claid_name: c, url: s3://bkt/x }\n",
            "profiles.p.output.destination",
            "storage of `storages`",
        ),
        (
            "profiles:\n  p:\n    output:\n      destination: storage://catalog/../x/\nstorages:\n  catalog: { claid_name: c, url: s3://bkt/x }\n",
            "profiles.p.output.destination",
            "..",
        ),
        (
            "profiles:\n  p:\n    output:\n      destination: storage://catalog//abs/\nstorages:\n  catalog: { claid_name: c, url: s3://bkt/x }\n",
            "profiles.p.output.destination",
            "invalid object key",
        ),
        // As a manifest's own: a folder, ending in `/` (without it, every manifest using the
        // profile was refused, naming a key it does not hold).
        (
            "profiles:\n  p:\n    output:\n      destination: storage://catalog/out25\nstorages:\n  catalog: { claid_name: c, url: s3://bkt/x }\n",
            "profiles.p.output.destination",
            "must be a folder (end with `/`)",
        ),
        (
            "profiles:\n  p:\n    output:\n      destination: \"storage://catalog/spring sale/\"\nstorages:\n  catalog: { claid_name: c, url: s3://bkt/x }\n",
            "profiles.p.output.destination",
            "space",
        ),
    ];
    for (yaml, key, needle) in cases {
        let err = config::parse(&format!("{base}{yaml}"), origin).expect_err(yaml);
        let problem = err
            .problems()
            .iter()
            .find(|p| p.key == key)
            .unwrap_or_else(|| panic!("no problem at {key} for {yaml}: {err}"));
        assert!(
            problem.message.contains(needle),
            "{key}: {:?} lacks {needle:?}",
            problem.message
        );
        assert!(problem.line.is_some(), "{key} has no line");
        assert!(!problem.message.contains("SECRETTOKEN"), "{problem:?}");
    }
    let ok = config::parse(
        &format!("{base}storages:\n  catalog: {{ claid_name: catalog-s3, url: s3://bkt/raw/ }}\n"),
        origin,
    )
    .expect("valid");
    let entry = &ok.storages["catalog"];
    // A profile may write into a configured storage; staging names one.
    let with_profile = config::parse(
        &format!(
            "{base}api: {{ staging: catalog }}\nprofiles:\n  p: {{ output: {{ destination: storage://catalog/out/ }} }}\nstorages:\n  catalog: {{ claid_name: catalog-s3, url: s3://bkt/raw/ }}\n"
        ),
        origin,
    )
    .expect("valid");
    assert_eq!(with_profile.api.staging.as_deref(), Some("catalog"));
    assert!(with_profile.api.staging_delete);
    assert_eq!(
        (entry.bucket.as_str(), entry.prefix.as_str()),
        ("bkt", "raw")
    );
    assert_eq!(entry.region, "us-east-1");
    assert!(entry.endpoint.is_none() && entry.credentials_file.is_none());
}

#[tokio::test]
async fn an_unreadable_credentials_file_stops_the_start_with_64_naming_it_and_no_secret() {
    let env = TestEnv::new(quick()).await;
    let missing = env.dir.path().join("no-such-keys.yaml");
    let config = env.config(
        "",
        &storages_yaml("catalog-s3", "s3://bkt/raw", "http://127.0.0.1:9", &missing),
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("storages.catalog") && stderr.contains("no-such-keys.yaml"),
        "{stderr}"
    );
    // A file with a wrong key names the file, not its value.
    let bad = env.dir.path().join("bad-keys.yaml");
    std::fs::write(&bad, "access_key_id: x\nsecret: hunter2-secret\n").expect("write");
    let config = env.config(
        "",
        &storages_yaml("catalog-s3", "s3://bkt/raw", "http://127.0.0.1:9", &bad),
    );
    let (code, stdout, stderr) = cli(&["validate", config.to_str().expect("utf-8")]).await;
    assert_eq!(code, 64, "{stdout}{stderr}");
    assert!(stdout.contains("bad-keys.yaml"), "{stdout}");
    assert!(!stdout.contains("hunter2") && !stderr.contains("hunter2"));
}

#[tokio::test]
async fn a_credentials_file_every_user_may_read_is_warned_about_naming_it() {
    let env = TestEnv::new(quick()).await;
    let keys = credentials_file(env.dir.path());
    let config = env.config(
        "",
        &storages_yaml("catalog-s3", "s3://bkt/raw", "http://127.0.0.1:9", &keys),
    );
    let (_, stderr) = env.run_once(&config).await;
    assert!(
        !stderr.contains("Every user of this machine may read"),
        "0600: {stderr}"
    );
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o640)).expect("mode");
    let (_, stderr) = env.run_once(&config).await;
    assert!(
        !stderr.contains("Every user of this machine may read"),
        "0640, as docs/storage.md installs it: {stderr}"
    );
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o644)).expect("mode");
    let (_, stderr) = env.run_once(&config).await;
    assert!(
        stderr.contains("Every user of this machine may read")
            && stderr.contains("s3-keys.yaml")
            && stderr.contains("chmod o-rwx"),
        "{stderr}"
    );
    assert!(!stderr.contains(S3_SECRET_KEY), "{stderr}");
    // `validate` says so too (it makes the start's checks).
    let (_, out, err) = cli(&["validate", config.to_str().expect("utf-8")]).await;
    assert!(
        out.contains("warning: storage `catalog`")
            && out.contains("Every user of this machine may read"),
        "{out}{err}"
    );
    assert!(!out.contains(S3_SECRET_KEY), "{out}");
}

#[tokio::test]
async fn validate_and_the_start_check_the_connector_and_the_bucket_with_the_right_exit_code() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    s3.create_bucket("catalog").await;
    let env = TestEnv::new(quick().storage(s3.connector("catalog-s3", "catalog", "raw"))).await;
    let keys = credentials_file(env.dir.path());
    let validate =
        |config: PathBuf| async move { cli(&["validate", config.to_str().expect("utf-8")]).await };

    // All good: the connector exists and the prefix can be listed.
    let good = env.config(
        "",
        &storages_yaml("catalog-s3", "s3://catalog/raw", &s3.endpoint, &keys),
    );
    let (code, stdout, stderr) = validate(good.clone()).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("ok (config)"), "{stdout}");

    // A connector Claid does not have: 64, naming the key, the connector and the ones it has.
    let config = env.config(
        "",
        &storages_yaml("catalog-s4", "s3://catalog/raw", &s3.endpoint, &keys),
    );
    let (code, stdout, _) = validate(config.clone()).await;
    assert_eq!(code, 64, "{stdout}");
    assert!(
        stdout.contains("storages.catalog")
            && stdout.contains("\"catalog-s4\"")
            && stdout.contains("catalog-s3"),
        "{stdout}"
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("catalog-s4"), "{stderr}");

    // A bucket that does not exist: 64, naming the bucket.
    let config = env.config(
        "",
        &storages_yaml("catalog-s3", "s3://no-such-bucket/raw", &s3.endpoint, &keys),
    );
    let (code, stdout, _) = validate(config).await;
    assert_eq!(code, 64, "{stdout}");
    assert!(stdout.contains("s3://no-such-bucket/raw"), "{stdout}");

    // An S3 endpoint nobody answers on: 69.
    let config = env.config(
        "",
        &storages_yaml("catalog-s3", "s3://catalog/raw", &closed_port_url(), &keys),
    );
    let (code, stdout, _) = validate(config).await;
    assert_eq!(code, 69, "{stdout}");
    assert!(stdout.contains("storages.catalog"), "{stdout}");
    assert!(!stdout.contains(S3_SECRET_KEY), "{stdout}");

    // A key without the permission to list connectors: 77.
    let good = env.config(
        "",
        &storages_yaml("catalog-s3", "s3://catalog/raw", &s3.endpoint, &keys),
    );
    env.emulator.control().set_forbidden(true);
    let (code, stdout, _) = validate(good.clone()).await;
    assert_eq!(code, 77, "{stdout}");
    let (code, stderr) = env.run_once(&good).await;
    assert_eq!(code, 77, "{stderr}");
    env.emulator.control().set_forbidden(false);

    // The daemon starts with a good config and has nothing to do.
    let (code, stderr) = env.run_once(&good).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("Checked the storages"), "{stderr}");
    s3.stop().await;
}

/// Claid's API answering 404 to the listing of connectors (`api.base_url` without its `/v1`,
/// or a proxy that does not pass the path): 64 at once from `validate` and the start, naming
/// the URL asked and the fix. It was 69 "rejected with 404: Not found", and the start retried
/// it as an outage until `api.unreachable_timeout`.
#[tokio::test(flavor = "multi_thread")]
async fn a_404_to_the_connector_listing_is_a_config_error_naming_the_url_and_base_url() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    s3.create_bucket("catalog").await;
    let env = TestEnv::new(quick().storage(s3.connector("catalog-s3", "catalog", "raw"))).await;
    let keys = credentials_file(env.dir.path());
    let config = env.config(
        "unreachable_timeout: 60s",
        &storages_yaml("catalog-s3", "s3://catalog/raw", &s3.endpoint, &keys),
    );
    let base = format!("http://{}/v1", env.emulator.addr());
    let text = std::fs::read_to_string(&config).expect("config");
    assert!(text.contains(&base), "{text}");
    let without = format!("http://{}/nope", env.emulator.addr());
    std::fs::write(&config, text.replace(&base, &without)).expect("config");
    let (code, stdout, stderr) = cli(&["validate", config.to_str().expect("utf-8")]).await;
    assert_eq!(code, 64, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("GET {without}/storage/storages"))
            && stdout.contains("`api.base_url`"),
        "names the URL and the key to fix: {stdout}"
    );
    // Not retried as an outage: 69 after the minute of `api.unreachable_timeout` otherwise.
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("/nope/storage/storages"), "{stderr}");
    s3.stop().await;
}

/// A storage whose `region` is not its bucket's: S3 answers `AuthorizationHeaderMalformed`
/// (or a 301 redirect), which no retry heals. `validate` and the start say 64 and name
/// `region` as the fix; it was 69 "check that the S3 endpoint is reachable", and the start
/// retried it as an outage until `api.unreachable_timeout`.
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_region_is_a_config_error_naming_region_not_an_outage() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    s3.create_bucket("catalog").await;
    let env = TestEnv::new(quick().storage(s3.connector("catalog-s3", "catalog", "raw"))).await;
    let keys = credentials_file(env.dir.path());
    let switch = Switch::start(&s3.endpoint).await;
    switch
        .answer("400 Bad Request", "AuthorizationHeaderMalformed")
        .await;
    let config = env.config(
        "unreachable_timeout: 60s",
        &storages_yaml("catalog-s3", "s3://catalog/raw", &switch.endpoint(), &keys),
    );
    let (code, stdout, stderr) = cli(&["validate", config.to_str().expect("utf-8")]).await;
    assert_eq!(code, 64, "{stdout}{stderr}");
    assert!(stdout.contains("`region`"), "{stdout}");
    let started = std::time::Instant::now();
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 64, "{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(50),
        "refused at once, not retried until api.unreachable_timeout"
    );
    assert!(stderr.contains("`region`"), "{stderr}");
    s3.stop().await;
}

/// A wrong `region` answered with a bare 301 (S3's answer to a request for a bucket of
/// another region, which object_store reports as "a redirect without LOCATION"): the daemon
/// asks the bucket's region with a plain `HEAD`, which S3 answers with an
/// `x-amz-bucket-region` header, and names it in the fix. (The hint said to find it with the
/// AWS command line.)
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_region_redirect_is_told_with_the_region_s3_names() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    s3.create_bucket("catalog").await;
    let env = TestEnv::new(quick().storage(s3.connector("catalog-s3", "catalog", "raw"))).await;
    let keys = credentials_file(env.dir.path());
    let switch = Switch::start(&s3.endpoint).await;
    switch
        .answer_with(
            "301 Moved Permanently",
            "PermanentRedirect",
            "x-amz-bucket-region: eu-west-3\r\n",
        )
        .await;
    let config = env.config(
        "",
        &storages_yaml("catalog-s3", "s3://catalog/raw", &switch.endpoint(), &keys),
    );
    let (code, stdout, stderr) = cli(&["validate", config.to_str().expect("utf-8")]).await;
    assert_eq!(code, 64, "{stdout}{stderr}");
    assert!(stdout.contains("set `region: eu-west-3`"), "{stdout}");
    // The region was asked with a plain HEAD of the bucket, carrying no key.
    let heads = switch.answered.lock().expect("lock").clone();
    let asked: Vec<&String> = heads.iter().filter(|h| h.starts_with("HEAD ")).collect();
    assert_eq!(asked.len(), 1, "{heads:?}");
    assert!(
        asked[0].starts_with("HEAD /catalog HTTP/1.1\r\n"),
        "{}",
        asked[0]
    );
    assert!(
        !asked[0].to_ascii_lowercase().contains("authorization"),
        "{}",
        asked[0]
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("set `region: eu-west-3`"), "{stderr}");
    s3.stop().await;
}

/// A moto bucket `catalog` with a connector `catalog-s3` on prefix `raw`, an emulator serving
/// it, a config whose storage `catalog` (with `extra` keys) points at it, and `n` inputs
/// `raw/in/sku-N.png` in the bucket.
async fn storage_env(
    s3: &S3Server,
    scenario: Scenario,
    extra: &str,
    n: usize,
) -> (TestEnv, PathBuf) {
    s3.create_bucket("catalog").await;
    for i in 0..n {
        let bytes = crate::support::png(40 + i as u32, 30);
        s3.put_object("catalog", &format!("raw/in/sku-{i}.png"), &bytes)
            .await;
    }
    let env = TestEnv::new(scenario.storage(s3.connector("catalog-s3", "catalog", "raw"))).await;
    let keys = credentials_file(env.dir.path());
    let mut storages = storages_yaml("catalog-s3", "s3://catalog/raw", &s3.endpoint, &keys);
    for line in extra.lines() {
        storages.push_str("    ");
        storages.push_str(line);
        storages.push('\n');
    }
    let config = env.config("", &storages);
    (env, config)
}

/// [`storage_env`] whose daemon reaches the bucket through a [`Switch`], with `api` keys in
/// the config's `api` section.
async fn switched_env(
    s3: &S3Server,
    scenario: Scenario,
    n: usize,
    api: &str,
) -> (TestEnv, Switch, PathBuf) {
    let (env, _) = storage_env(s3, scenario, "", n).await;
    let switch = Switch::start(&s3.endpoint).await;
    let keys = credentials_file(env.dir.path());
    let storages = storages_yaml("catalog-s3", "s3://catalog/raw", &switch.endpoint(), &keys);
    let config = env.config(api, &storages);
    (env, switch, config)
}

/// The images the emulator was sent to edit (alone or in batches): what was billed.
fn billed(env: &TestEnv) -> u64 {
    let stats = env.stats();
    stats.submits + stats.batch_images
}

/// Appends `text` to the config file (keys the test adds to what `storage_env` wrote).
fn append_to(config: &Path, text: &str) {
    let mut whole = std::fs::read_to_string(config).expect("config");
    whole.push_str(text);
    std::fs::write(config, whole).expect("config");
}

/// The image files under `root` (reports left out).
fn images_under(root: &Path) -> Vec<PathBuf> {
    TestEnv::files_under(root)
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains(".report."))
        .collect()
}

#[tokio::test]
async fn storage_outputs_are_written_by_claid_checked_in_the_bucket_and_never_downloaded() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let (env, config) = storage_env(&s3, quick(), "", 4).await;
    // Three images named as Claid names batch outputs (one batch), one with its own name
    // (alone); inputs named by the storage's key, rewritten to the connector's name.
    env.drop_file(
        "shoes.yaml",
        b"output: { format: jpeg, destination: storage://catalog/out/ }\nimages:\n  - storage://catalog/in/sku-0.png\n  - storage://catalog/in/sku-1.png\n  - storage://catalog/in/sku-2.png\n  - { input: storage://catalog/in/sku-3.png, output: renamed.jpg }\n",
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");

    let mut keys = s3.list_keys("catalog", "raw/out/").await;
    keys.sort();
    assert_eq!(
        keys,
        [
            "raw/out/shoes/renamed.jpg",
            "raw/out/shoes/sku-0.jpg",
            "raw/out/shoes/sku-1.jpg",
            "raw/out/shoes/sku-2.jpg"
        ]
    );
    // Nothing came through this machine: no tmp_url download, no image in the outbox.
    let stats = env.stats();
    assert_eq!(stats.downloads, 0, "{stats:?}");
    assert!(
        images_under(&env.outbox).is_empty(),
        "{:?}",
        images_under(&env.outbox)
    );
    // The three batchable images went in batches, the renamed one alone.
    assert_eq!(stats.batch_images, 3, "{stats:?}");
    assert_eq!(stats.submits, 1, "{stats:?}");
    assert_eq!(stats.duplicate_submits, 0, "{stats:?}");

    let report = env.report("shoes");
    let rows = report["jobs"].as_array().expect("rows");
    assert_eq!(rows.len(), 4);
    for (row, name) in rows.iter().zip(["sku-0", "sku-1", "sku-2", "renamed"]) {
        assert_eq!(row["status"], "done", "{row}");
        assert_eq!(
            row["object"],
            format!("storage://catalog-s3/out/shoes/{name}.jpg"),
            "{row}"
        );
        assert!(row["bytes"].as_u64().unwrap_or(0) > 0, "{row}");
    }
    let csv = std::fs::read_to_string(env.outbox.join("shoes.report.csv")).expect("csv");
    assert!(
        csv.contains("storage://catalog-s3/out/shoes/renamed.jpg"),
        "{csv}"
    );
    // The same rows again: `plan` says none is submitted, as the daemon decides (an object
    // recorded in a storage is taken from the record).
    let again = env.drop_file("shoes.yaml", b"output: { format: jpeg, destination: storage://catalog/out/ }\nimages:\n  - storage://catalog/in/sku-0.png\n  - storage://catalog/in/sku-1.png\n  - storage://catalog/in/sku-2.png\n  - { input: storage://catalog/in/sku-3.png, output: renamed.jpg }\n");
    let (code, out, err) = cli(&[
        "plan",
        again.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("4 images: 0 to process, 4 unchanged"), "{out}");
    s3.stop().await;
}

#[tokio::test]
async fn a_storage_output_with_output_local_copy_is_also_written_into_the_outbox() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let (env, config) = storage_env(&s3, quick(), "output_local_copy: true", 2).await;
    env.drop_file(
        "shoes.yaml",
        b"output: { format: png, destination: storage://catalog/out/ }\nimages:\n  - storage://catalog/in/sku-0.png\n  - storage://catalog/in/sku-1.png\n",
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    for i in 0..2 {
        let local = std::fs::read(env.outbox.join(format!("shoes/sku-{i}.png"))).expect("local");
        let object = s3
            .get_object("catalog", &format!("raw/out/shoes/sku-{i}.png"))
            .await
            .expect("object");
        assert_eq!(local, object, "the local copy is the object");
    }
    let report = env.report("shoes");
    assert_eq!(
        report["jobs"][0]["object"],
        "storage://catalog-s3/out/shoes/sku-0.png"
    );
    s3.stop().await;
}

/// A batch with storage outputs where Claid gave one result a name that matches no input: the
/// object is not given to the one image left (Claid wrote it under its own name, not under
/// that image's mirrored key, so the check would fail the image as `object-missing` though
/// written and billed); the image is held in doubt and batching is switched off, as for any
/// result no name explains.
#[tokio::test]
async fn a_renamed_result_with_storage_outputs_is_held_in_doubt_not_failed_as_missing() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let mut exercised = false;
    for seed in 1..=12 {
        let scenario = quick().batch_rename_share(0.2).seed(seed);
        let (env, config) = storage_env(&s3, scenario, "", 6).await;
        let mut manifest = String::from(
            "output: { format: jpeg, destination: storage://catalog/out/ }\nimages:\n",
        );
        for i in 0..6 {
            manifest.push_str(&format!("  - storage://catalog/in/sku-{i}.png\n"));
        }
        env.drop_file(&format!("m{seed}.yaml"), manifest.as_bytes());
        let (_, stderr) = env.run_once(&config).await;
        let stats = env.stats();
        // Only a batch of several images with exactly one renamed result is the case.
        if !stats
            .batches
            .values()
            .any(|b| b.renamed == 1 && b.images >= 2)
        {
            continue;
        }
        exercised = true;
        let report = env.report(&format!("m{seed}"));
        for row in report["jobs"].as_array().expect("rows") {
            let reason = row["reason"].as_str().unwrap_or_default();
            assert!(
                !reason.contains("object-missing"),
                "seed {seed}: {row}\n{stderr}"
            );
        }
        assert!(
            stderr.contains("Batching is switched off"),
            "seed {seed}: {stderr}"
        );
        break;
    }
    assert!(exercised, "no seed made a batch with one renamed result");
    s3.stop().await;
}

/// The dashboard's page of a run whose outputs went to a storage names each object, and
/// offers no thumbnail of the file an earlier run left at the same outbox path (it showed
/// that older image as this run's output).
#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_names_storage_objects_and_shows_no_stale_outbox_file() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let (env, config) = storage_env(&s3, quick(), "", 1).await;
    env.drop_file(
        "m.yaml",
        b"output: { format: jpeg }\nimages:\n  - storage://catalog/in/sku-0.png\n",
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        env.outbox.join("m/sku-0.jpg").is_file(),
        "run 1 wrote a local file"
    );
    append_to(&config, "web:\n  listen: 127.0.0.1:0\n");
    let mut daemon = env.spawn_daemon(&config, 0);
    let base = format!("http://{}", env.dashboard(0).await);
    env.drop_file(
        "m.yaml",
        b"output: { format: jpeg, destination: storage://catalog/out/ }\nimages:\n  - storage://catalog/in/sku-0.png\n",
    );
    let deadline = std::time::Duration::from_secs(60);
    // Run 2's report names the object once the run has ended.
    crate::support::wait_until("run 2 is reported", deadline, || {
        std::fs::read_to_string(env.outbox.join("m.report.json"))
            .is_ok_and(|report| report.contains("storage://catalog-s3/out/m/sku-0.jpg"))
    })
    .await;
    let id = crate::support::wait_for("run 2 is listed", deadline, async || {
        let (status, body) = claid_hotfolder::admin::request(&env.socket(), "GET", "/status", None)
            .await
            .ok()?;
        let view: serde_json::Value = serde_json::from_slice(&body).ok()?;
        (status == 200).then_some(())?;
        let ids: Vec<u64> = view["manifests"]
            .as_array()?
            .iter()
            .filter(|m| m["manifest"] == "m.yaml")
            .filter_map(|m| m["id"].as_u64())
            .collect();
        // Both runs: the newer is run 2.
        (ids.len() >= 2).then(|| ids.into_iter().max()).flatten()
    })
    .await;
    let page = reqwest::get(format!("{base}/manifests/{id}"))
        .await
        .expect("page")
        .text()
        .await
        .expect("text");
    crate::support::stop(&mut daemon).await;
    assert!(page.contains("s3://catalog/raw/out/m/sku-0.jpg"), "{page}");
    assert!(!page.contains("/thumb/m/sku-0.jpg"), "{page}");
    s3.stop().await;
}

/// A daemon on a storage env (`storage_env`, one image) whose first edit is done and its run
/// archived: `m.yaml` sent `sku-0.png` to `storage://catalog/out/`, written at
/// `raw/out/m/sku-0.png`.
async fn daemon_after_a_first_edit(s3: &S3Server) -> (TestEnv, PathBuf, tokio::process::Child) {
    let (env, config) = storage_env(s3, quick(), "", 1).await;
    let daemon = env.spawn_daemon(&config, 0);
    env.drop_file(
        "m.yaml",
        b"output: { format: png, destination: storage://catalog/out/ }\nimages:\n  - storage://catalog/in/sku-0.png\n",
    );
    crate::support::wait_until(
        "the first edit is archived",
        std::time::Duration::from_secs(60),
        || TestEnv::files_under(&env.archive).len() == 1,
    )
    .await;
    assert_eq!(env.report("m")["jobs"][0]["status"], "done");
    (env, config, daemon)
}

/// A replay whose edit Claid writes with the same bytes within the same second as the object
/// it replaces (S3 tells the time of writing to the second: the same ETag and the same
/// `Last-Modified`) is done, not failed `object-missing` as if Claid had not written it: the
/// submit waits until the noted object's second is over.
#[tokio::test(flavor = "multi_thread")]
async fn an_edit_written_in_the_second_of_the_object_it_replaces_is_told_apart() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let (env, config, mut daemon) = daemon_after_a_first_edit(&s3).await;
    let deadline = std::time::Duration::from_secs(60);
    let report = env.outbox.join("m.report.json");
    let first_report = std::fs::metadata(&report).and_then(|m| m.modified()).ok();
    let edit = s3
        .get_object("catalog", "raw/out/m/sku-0.png")
        .await
        .expect("the first edit");

    // The same bytes written again at the start of a second, then replayed at once: Claid's
    // edit of the replay (the same bytes again) would land in that second.
    let since_second = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_millis())
            .unwrap_or(0)
    };
    crate::support::wait_until("a second starts", deadline, || since_second() < 50).await;
    s3.put_object("catalog", "raw/out/m/sku-0.png", &edit).await;
    let (code, out, err) = crate::support::cli(&[
        "replay",
        "--manifest",
        "m.yaml",
        "--config",
        config.to_str().expect("utf-8"),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    crate::support::wait_until("the replay is reported", deadline, || {
        std::fs::metadata(&report).and_then(|m| m.modified()).ok() != first_report
    })
    .await;
    crate::support::stop(&mut daemon).await;
    let report = env.report("m");
    assert_eq!(report["jobs"][0]["status"], "done", "{report}");
    let stats = env.stats();
    assert_eq!(stats.submits + stats.batch_submits, 2, "{stats:?}");
    s3.stop().await;
}

/// A re-edit whose new object Claid writes where the daemon does not look (its connector
/// moved at Claid since the daemon's start) finds the earlier edit at the key: that older
/// object is not taken for the new one (it was recorded done, the catalogue keeping the old
/// image). Nor is the job failed `object-missing`, which had the next drop bill the image
/// again: the daemon compares the connector again, holds the storage and notes where the
/// connector points. With the connector mended and the daemon restarted, the new edit is
/// copied from where Claid wrote it over the earlier one, billed once.
#[tokio::test]
async fn an_earlier_edit_left_at_the_key_is_not_taken_for_the_new_one() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let (env, config, mut daemon) = daemon_after_a_first_edit(&s3).await;
    let deadline = std::time::Duration::from_secs(60);
    assert_eq!(
        s3.list_keys("catalog", "raw/out/").await,
        ["raw/out/m/sku-0.png"]
    );
    let first_edit = s3.get_object("catalog", "raw/out/m/sku-0.png").await;

    // Claid's connector now reads and writes under `other/` (the input is there too).
    s3.put_object(
        "catalog",
        "other/in/sku-0.png",
        &crate::support::png(40, 30),
    )
    .await;
    move_connector(&env, "other").await;

    // The team's re-edit: new operations, the same output key.
    env.drop_file(
        "m.yaml",
        b"output: { format: png, destination: storage://catalog/out/ }\noperations: { adjustments: { exposure: 10 } }\nimages:\n  - storage://catalog/in/sku-0.png\n",
    );
    crate::support::wait_until("the moved connector is found", deadline, || {
        env.daemon_log(0)
            .contains("Claid's connector changed during the run")
    })
    .await;
    crate::support::stop(&mut daemon).await;
    let log = env.daemon_log(0);
    assert!(!log.contains("Job failed"), "nothing failed:\n{log}");
    // Claid did write the new edit, under its connector's new path; the first is at the key.
    assert_eq!(
        s3.list_keys("catalog", "other/out/").await,
        ["other/out/m/sku-0.png"]
    );
    assert_eq!(
        s3.get_object("catalog", "raw/out/m/sku-0.png").await,
        first_edit
    );
    let billed = env.stats().submits + env.stats().batch_images;

    // The connector mended (moved back) and the daemon restarted: the re-edit is copied from
    // where Claid wrote it over the earlier edit, and recorded done; nothing is billed again.
    move_connector(&env, "raw").await;
    let mut daemon = env.spawn_daemon(&config, 1);
    crate::support::wait_until("the re-edit is archived", deadline, || {
        TestEnv::files_under(&env.archive).len() == 2
    })
    .await;
    crate::support::stop(&mut daemon).await;
    let report = env.report("m");
    assert_eq!(report["jobs"][0]["status"], "done", "{report}");
    let re_edit = s3.get_object("catalog", "other/out/m/sku-0.png").await;
    assert!(re_edit.is_some() && re_edit != first_edit);
    assert_eq!(
        s3.get_object("catalog", "raw/out/m/sku-0.png").await,
        re_edit,
        "the key holds the re-edit"
    );
    assert_eq!(
        env.stats().submits + env.stats().batch_images,
        billed,
        "not billed again: {report}"
    );
    s3.stop().await;
}

/// A storage output that is the row's own input (the destination folder mirrors the inbox
/// onto the inputs' own folder) is refused at intake, before any spend: Claid would have
/// written the edit over the original photo.
#[tokio::test]
async fn a_storage_output_over_its_own_input_is_refused_before_any_spend() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let (env, config) = storage_env(&s3, quick(), "", 0).await;
    let original = crate::support::png(40, 30);
    s3.put_object("catalog", "raw/in/m/a.png", &original).await;
    env.drop_file(
        "m.yaml",
        b"output: { format: png, destination: storage://catalog/in/ }\nimages:\n  - storage://catalog/in/m/a.png\n",
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_ne!(code, 0, "{stderr}");
    let error = std::fs::read_to_string(env.rejected.join("m.yaml.error.txt")).expect("error file");
    assert!(error.contains("own input"), "{error}");
    let stats = env.stats();
    assert_eq!(
        stats.submits + stats.batch_images,
        0,
        "nothing sent: {stats:?}"
    );
    assert_eq!(
        s3.get_object("catalog", "raw/in/m/a.png")
            .await
            .expect("original"),
        original
    );
    s3.stop().await;
}

/// `output_local_copy` of an object larger than `limits.max_download_bytes`: the object is the
/// output, written and billed, so the job is done with it and no local copy is made (a WARN
/// says so); dropped again, nothing is billed. (It failed as `download-too-large`, and a later
/// drop billed the image again.)
#[tokio::test]
async fn a_local_copy_over_the_download_cap_is_left_out_and_the_object_is_the_output() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let (env, config) = storage_env(&s3, quick(), "output_local_copy: true", 1).await;
    append_to(&config, "limits: { max_download_bytes: 64 }\n");
    let manifest = b"output: { format: png, destination: storage://catalog/out/ }\nimages:\n  - storage://catalog/in/sku-0.png\n";
    env.drop_file("shoes.yaml", manifest);
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("no local copy is made"), "{stderr}");
    let report = env.report("shoes");
    assert_eq!(report["jobs"][0]["status"], "done", "{report:#}");
    assert!(
        !env.outbox.join("shoes/sku-0.png").exists(),
        "no local copy"
    );
    let billed = env.stats().submits + env.stats().batch_images;
    assert_eq!(billed, 1);
    env.drop_file("shoes.yaml", manifest);
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        env.stats().submits + env.stats().batch_images,
        billed,
        "dropped again, nothing is billed"
    );
    s3.stop().await;
}

/// A later run of the same rows (`output_local_copy: true`) whose local copy is gone fetches
/// it again from the object Claid wrote, without a submit (the object was paid for); where the
/// object is gone too, the image is made again.
#[tokio::test]
async fn a_lost_local_copy_is_fetched_again_from_its_object_without_a_submit() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let (env, config) = storage_env(&s3, quick(), "output_local_copy: true", 3).await;
    let manifest = b"output: { format: png, destination: storage://catalog/out/ }\nimages:\n  - storage://catalog/in/sku-0.png\n  - storage://catalog/in/sku-1.png\n  - storage://catalog/in/sku-2.png\n";
    env.drop_file("shoes.yaml", manifest);
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(billed(&env), 3);
    // sku-0: the local copy is gone, its object is there; sku-1: both are gone; sku-2: both
    // are there.
    std::fs::remove_file(env.outbox.join("shoes/sku-0.png")).expect("remove copy");
    std::fs::remove_file(env.outbox.join("shoes/sku-1.png")).expect("remove copy");
    s3.delete_object("catalog", "raw/out/shoes/sku-1.png").await;
    let again = env.drop_file("shoes.yaml", manifest);
    // `plan` tells it as the daemon decides (it does not look in the bucket).
    let (code, out, err) = cli(&[
        "plan",
        again.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let plans: Vec<_> = out
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .skip(1)
        .take(3)
        .collect();
    assert_eq!(plans, ["copy", "copy", "unchanged"], "{out}");
    assert!(
        out.contains("3 images: 0 to process, 1 unchanged, 2 fetched again without a new bill"),
        "the summary counts the copies apart: {out}"
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        billed(&env),
        4,
        "only the image whose object is gone is made again: {stderr}"
    );
    for i in 0..3 {
        let local = std::fs::read(env.outbox.join(format!("shoes/sku-{i}.png"))).expect("local");
        let object = s3
            .get_object("catalog", &format!("raw/out/shoes/sku-{i}.png"))
            .await
            .expect("object");
        assert_eq!(local, object, "sku-{i}: the local copy is the object");
    }
    let report = env.report("shoes");
    let statuses: Vec<_> = report["jobs"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| row["status"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(statuses, ["done", "done", "unchanged"], "{report:#}");
    s3.stop().await;
}

/// A storage input replaced at its key since its row was made (a catalogue kept in a bucket,
/// an image shot again): the manifest dropped again unchanged makes that row again, and its
/// output is the edit of the new image; the row whose input is the same stays `unchanged`,
/// and a third drop makes nothing. (The row was reported `unchanged`, the edit of the old
/// image left in place: acceptance run.)
#[tokio::test(flavor = "multi_thread")]
async fn issue15_a_storage_input_replaced_at_its_key_is_made_again_not_unchanged() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let (env, config) = storage_env(&s3, quick(), "", 2).await;
    let manifest = b"output: { format: png, destination: storage://catalog/out/ }\nimages:\n  - storage://catalog/in/sku-0.png\n  - storage://catalog/in/sku-1.png\n";
    env.drop_file("shoes.yaml", manifest);
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(billed(&env), 2);
    let before = s3
        .get_object("catalog", "raw/out/shoes/sku-0.png")
        .await
        .expect("object");
    s3.put_object("catalog", "raw/in/sku-0.png", &crate::support::png(90, 70))
        .await;
    env.drop_file("shoes.yaml", manifest);
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        billed(&env),
        3,
        "only the replaced image is made again: {stderr}"
    );
    let report = env.report("shoes");
    let statuses: Vec<_> = report["jobs"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| row["status"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(statuses, ["done", "unchanged"], "{report:#}");
    let after = s3
        .get_object("catalog", "raw/out/shoes/sku-0.png")
        .await
        .expect("object");
    assert_ne!(after, before, "the edit of the new image is there");
    // Nothing changed since: nothing is made.
    env.drop_file("shoes.yaml", manifest);
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(billed(&env), 3, "{stderr}");
    s3.stop().await;
}

/// The look at storage inputs of rows made before bills nothing on a guess: dropped again
/// while the bucket's endpoint answers pages (a proxy's, with no object's ETag) or "not
/// found" for every key, the rows stay `unchanged` and nothing is sent. (Every row was taken
/// as replaced and billed again: review.)
#[tokio::test(flavor = "multi_thread")]
async fn issue15_inputs_looked_at_again_are_made_again_only_on_a_definite_answer() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let (env, switch, config) = switched_env(&s3, quick(), 2, "").await;
    let manifest = b"output: { format: png, destination: storage://catalog/out/ }\nimages:\n  - storage://catalog/in/sku-0.png\n  - storage://catalog/in/sku-1.png\n";
    env.drop_file("shoes.yaml", manifest);
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(billed(&env), 2);
    // The daemon starts while the bucket answers (its start checks it), then the answers go.
    let mut daemon = env.spawn_daemon(&config, 0);
    let deadline = std::time::Duration::from_secs(60);
    crate::support::wait_until("ready", deadline, || env.daemon_log(0).contains("Ready")).await;
    for (n, answer) in ["page", "not found"].into_iter().enumerate() {
        if answer == "page" {
            switch.answer_page("200 OK").await;
        } else {
            switch.answer("404 Not Found", "NoSuchKey").await;
        }
        env.drop_file("shoes.yaml", manifest);
        crate::support::wait_until("the drop taken in", deadline, || {
            env.daemon_log(0)
                .matches("Unchanged and already finished; nothing to do")
                .count()
                > n
        })
        .await;
        let log = env.daemon_log(0);
        assert_eq!(billed(&env), 2, "{answer}: nothing billed again: {log}");
        assert!(
            !log.contains("those rows are made again"),
            "{answer}: {log}"
        );
        if answer == "page" {
            assert!(
                log.contains("could not all be looked at"),
                "{answer}: {log}"
            );
        }
        switch.off().await;
        switch.on();
    }
    crate::support::stop(&mut daemon).await;
    s3.stop().await;
}

/// `output_local_copy` of an object the bucket kept only part of: checked like a download
/// (the image Claid described), so the job fails as `result-mismatch` and no broken file is in
/// the outbox (it was copied and reported done).
#[tokio::test]
async fn a_local_copy_of_a_broken_object_fails_as_a_mismatch_not_done() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let (env, config) = storage_env(
        &s3,
        quick().short_objects(true),
        "output_local_copy: true",
        1,
    )
    .await;
    env.drop_file(
        "shoes.yaml",
        b"output: { format: png, destination: storage://catalog/out/ }\nimages:\n  - storage://catalog/in/sku-0.png\n",
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 2, "{stderr}");
    let report = env.report("shoes");
    let reason = report["jobs"][0]["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("result-mismatch"), "{report:#}");
    assert!(
        !env.outbox.join("shoes/sku-0.png").exists(),
        "no broken copy in the outbox"
    );
    s3.stop().await;
}

/// Without `output_local_copy`, the object Claid wrote is still read at its two ends (a few
/// KiB, not downloaded): one the bucket kept only half of fails as `result-mismatch`, not
/// recorded done ("not empty" was all a HEAD could tell); a whole one is done.
#[tokio::test]
async fn a_broken_output_object_fails_as_a_mismatch_without_a_local_copy() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    for (short, input) in [(true, "sku-0"), (false, "sku-1")] {
        let (env, config) = storage_env(&s3, quick().short_objects(short), "", 2).await;
        env.drop_file(
            "shoes.yaml",
            format!(
                "output: {{ format: png, destination: storage://catalog/out/ }}\nimages:\n  - storage://catalog/in/{input}.png\n"
            )
            .as_bytes(),
        );
        let (code, stderr) = env.run_once(&config).await;
        let report = env.report("shoes");
        let row = &report["jobs"][0];
        if short {
            assert_eq!(code, 2, "{stderr}");
            let reason = row["reason"].as_str().unwrap_or_default();
            assert!(
                reason.starts_with("result-mismatch") && reason.contains("cut short"),
                "{report:#}"
            );
        } else {
            assert_eq!(code, 0, "{stderr}");
            assert_eq!(row["status"], "done", "{row}");
        }
    }
    s3.stop().await;
}

/// `output_local_copy` of one image whose copy meets an outbox turned read-only while Claid
/// writes the object: the run ends 2, its failure naming the replay that copies the object
/// again; then the outbox takes writes again. The env, config, mount and outbox; `None` where
/// tmpfs cannot be mounted.
async fn a_local_copy_unwritten(
    s3: &S3Server,
) -> Option<(TestEnv, PathBuf, crate::support::Tmpfs, PathBuf)> {
    let scenario = Scenario::default().latency(Latency::Fixed(std::time::Duration::from_secs(2)));
    let (env, config) = storage_env(s3, scenario, "output_local_copy: true", 1).await;
    let (tmpfs, disk, outbox) = crate::pipeline::outbox_on_a_tmpfs(&env)?;
    crate::pipeline::move_outbox(&env, &config, &outbox);
    let text = std::fs::read_to_string(&config).expect("config").replacen(
        "api:\n",
        "api:\n  unreachable_timeout: 2s\n  batch: { max_images: 1 }\n",
        1,
    );
    std::fs::write(&config, text).expect("config");
    env.drop_file(
        "shoes.yaml",
        b"output: { format: png, destination: storage://catalog/out/ }\nimages:\n  - storage://catalog/in/sku-0.png\n",
    );
    let (code, stderr) =
        crate::pipeline::run_once_turning_read_only_when(&env, &config, &disk, |s| s.submits >= 1)
            .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("copies the object Claid wrote from the bucket again"),
        "{stderr}"
    );
    let config_arg = config.to_str().expect("utf-8");
    let (code, stdout, err) =
        crate::support::cli(&["replay", "--failed", "--config", config_arg]).await;
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(
        stdout.contains("made and billed but not written"),
        "{stdout}"
    );
    Some((env, config, tmpfs, outbox))
}

/// [`a_local_copy_unwritten`], replayed: the object Claid wrote (and billed) is copied from
/// the bucket again: one image sent in all (a replay used to send it again, billed twice).
#[tokio::test(flavor = "multi_thread")]
async fn a_local_copy_that_could_not_be_written_is_copied_again_by_replay_not_billed_again() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let Some((env, config, _tmpfs, outbox)) = a_local_copy_unwritten(&s3).await else {
        s3.stop().await;
        return;
    };
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    let local = std::fs::read(outbox.join("shoes/sku-0.png")).expect("local copy");
    let object = s3
        .get_object("catalog", "raw/out/shoes/sku-0.png")
        .await
        .expect("object");
    assert_eq!(local, object, "the local copy is the object");
    assert_eq!(env.stats().submits, 1, "not billed again: {stderr}");
    s3.stop().await;
}

/// The same when the object was deleted from the bucket before the replay's copy: known gone,
/// the image is made again (not failed again at every replay), and its copy written.
#[tokio::test(flavor = "multi_thread")]
async fn a_kept_object_deleted_from_the_bucket_is_made_again_by_the_replay() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let Some((env, config, _tmpfs, outbox)) = a_local_copy_unwritten(&s3).await else {
        s3.stop().await;
        return;
    };
    s3.delete_object("catalog", "raw/out/shoes/sku-0.png").await;
    the_replay_makes_the_image_again(&env, &config, &outbox, &s3).await;
    s3.stop().await;
}

/// `run --once` after [`a_local_copy_unwritten`] and a change to the object in the bucket:
/// the image is made again (a second submit), and its local copy is Claid's new object, which
/// is returned.
async fn the_replay_makes_the_image_again(
    env: &TestEnv,
    config: &Path,
    outbox: &Path,
    s3: &S3Server,
) -> Vec<u8> {
    let (code, stderr) = env.run_once(config).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("the image is made again"), "{stderr}");
    assert_eq!(env.stats().submits, 2, "made again: {stderr}");
    let local = std::fs::read(outbox.join("shoes/sku-0.png")).expect("local copy");
    let object = s3
        .get_object("catalog", "raw/out/shoes/sku-0.png")
        .await
        .expect("object made again");
    assert_eq!(local, object, "the local copy is Claid's new object");
    local
}

/// The same when another image of the same size and format was put at the object's key
/// before the replay (another tool wrote over it): it is not copied for this image's result
/// (the kept result carries the sha256 of the bytes the failed copy read); the image is made
/// again, and the local copy is Claid's new object.
#[tokio::test(flavor = "multi_thread")]
async fn a_kept_object_replaced_in_the_bucket_is_not_copied_by_the_replay() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let Some((env, config, _tmpfs, outbox)) = a_local_copy_unwritten(&s3).await else {
        s3.stop().await;
        return;
    };
    let key = "raw/out/shoes/sku-0.png";
    let claids = s3.get_object("catalog", key).await.expect("object");
    let (width, height) = image::load_from_memory(&claids)
        .map(|i| (i.width(), i.height()))
        .expect("an image");
    let mut foreign = Vec::new();
    image::RgbImage::from_pixel(width, height, image::Rgb([200, 10, 10]))
        .write_to(
            &mut std::io::Cursor::new(&mut foreign),
            image::ImageFormat::Png,
        )
        .expect("png");
    assert_ne!(foreign, claids);
    s3.put_object("catalog", key, &foreign).await;
    let local = the_replay_makes_the_image_again(&env, &config, &outbox, &s3).await;
    assert_ne!(local, foreign, "the foreign object is not the result");
    s3.stop().await;
}

/// The same when the object was emptied (a 0-byte placeholder put at its key): made again,
/// not failed `object-missing` at every replay.
#[tokio::test(flavor = "multi_thread")]
async fn a_kept_object_emptied_in_the_bucket_is_made_again_by_the_replay() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let Some((env, config, _tmpfs, outbox)) = a_local_copy_unwritten(&s3).await else {
        s3.stop().await;
        return;
    };
    let key = "raw/out/shoes/sku-0.png";
    s3.put_object("catalog", key, b"").await;
    let local = the_replay_makes_the_image_again(&env, &config, &outbox, &s3).await;
    assert!(!local.is_empty());
    s3.stop().await;
}

/// A later run whose local copy is gone and whose object was replaced in the bucket since
/// (another tool wrote over it) does not take that object for the image's result (it was
/// copied into the outbox as if Claid had made it): the image is made again.
#[tokio::test]
async fn a_lost_local_copy_whose_object_was_replaced_is_made_again_not_copied() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let (env, config) = storage_env(&s3, quick(), "output_local_copy: true", 1).await;
    let manifest = b"output: { format: png, destination: storage://catalog/out/ }\nimages:\n  - storage://catalog/in/sku-0.png\n";
    env.drop_file("shoes.yaml", manifest);
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(billed(&env), 1);
    std::fs::remove_file(env.outbox.join("shoes/sku-0.png")).expect("remove copy");
    let foreign = crate::support::png(7, 7);
    s3.put_object("catalog", "raw/out/shoes/sku-0.png", &foreign)
        .await;
    env.drop_file("shoes.yaml", manifest);
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(billed(&env), 2, "the image is made again: {stderr}");
    let local = std::fs::read(env.outbox.join("shoes/sku-0.png")).expect("local");
    assert_ne!(
        local, foreign,
        "the replacing object is not taken as the result"
    );
    let object = s3
        .get_object("catalog", "raw/out/shoes/sku-0.png")
        .await
        .expect("object");
    assert_eq!(
        local, object,
        "the local copy is the object Claid wrote again"
    );
    assert_eq!(env.report("shoes")["jobs"][0]["status"], "done");
    s3.stop().await;
}

#[tokio::test]
async fn a_second_manifest_writing_the_same_object_is_refused_at_intake() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    // Slow tasks keep the first run active while the second is taken in.
    let scenario = Scenario::default()
        .latency(Latency::Fixed(std::time::Duration::from_millis(1500)))
        .seed(3);
    let (env, config) = storage_env(&s3, scenario, "", 1).await;
    // `a/shoes.yaml` writes `a/shoes/sku-0.jpg` under `x/`; `shoes.yaml` writes
    // `shoes/sku-0.jpg` under `x/a/`: the same object, two different outbox paths.
    refuses_the_second_writer_of_one_object(&s3, &env, &config, "catalog").await;
    s3.stop().await;
}

/// `a/shoes.yaml` writes `a/shoes/sku-0.jpg` under `storage://catalog/x/`; `shoes.yaml` writes
/// `shoes/sku-0.jpg` under `storage://SECOND/x/a/`: the same object when `SECOND`'s prefix is
/// `catalog`'s. One of the two is refused at intake, its error file names the object in the
/// bucket, and the object is written once.
async fn refuses_the_second_writer_of_one_object(
    s3: &S3Server,
    env: &TestEnv,
    config: &Path,
    second: &str,
) {
    env.drop_file(
        "a/shoes.yaml",
        b"output: { destination: storage://catalog/x/ }\nimages:\n  - storage://catalog/in/sku-0.png\n",
    );
    env.drop_file(
        "shoes.yaml",
        format!("output: {{ destination: storage://{second}/x/a/ }}\nimages:\n  - storage://catalog/in/sku-0.png\n").as_bytes(),
    );
    let (code, stderr) = env.run_once(config).await;
    assert_eq!(code, 2, "one manifest is rejected: {stderr}");
    let rejected: Vec<PathBuf> = TestEnv::files_under(&env.rejected)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".error.txt"))
        .collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    let text = std::fs::read_to_string(env.rejected.join(&rejected[0])).expect("error file");
    assert!(
        text.contains("s3://catalog/raw/x/a/shoes/sku-0.jpg` in the bucket"),
        "{text}"
    );
    assert_eq!(
        s3.list_keys("catalog", "raw/x/a/shoes/").await,
        ["raw/x/a/shoes/sku-0.jpg"]
    );
}

/// Keys that differ only in the spelling of their format's extension (`sku-0.jpg`,
/// `sku-0.jpeg`) are one object to Claid, which may write either, and to the daemon's checks,
/// which take an object at either: a second active manifest writing the twin is refused at
/// intake as one writing the same key. (Both were taken in, and one row was recorded done
/// with the other's object, its own image never made.)
#[tokio::test]
async fn issue15_a_second_manifest_writing_the_twin_key_is_refused_at_intake() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let scenario = Scenario::default()
        .latency(Latency::Fixed(std::time::Duration::from_millis(1500)))
        .seed(3);
    let (env, config) = storage_env(&s3, scenario, "", 1).await;
    env.drop_file(
        "a/shoes.yaml",
        b"output: { destination: storage://catalog/x/ }\nimages:\n  - storage://catalog/in/sku-0.png\n",
    );
    env.drop_file(
        "shoes.yaml",
        b"output: { destination: storage://catalog/x/a/ }\nimages:\n  - { input: storage://catalog/in/sku-0.png, output: sku-0.jpeg }\n",
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 2, "one manifest is rejected: {stderr}");
    let rejected: Vec<PathBuf> = TestEnv::files_under(&env.rejected)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".error.txt"))
        .collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    let text = std::fs::read_to_string(env.rejected.join(&rejected[0])).expect("error file");
    // Whichever manifest came second is refused at the key it wrote or its twin.
    assert!(
        text.contains("s3://catalog/raw/x/a/shoes/sku-0.jp")
            && text.contains("is reserved with its twin"),
        "{text}"
    );
    assert_eq!(
        s3.list_keys("catalog", "raw/x/a/shoes/").await.len(),
        1,
        "one object written: {stderr}"
    );
    s3.stop().await;
}

/// Two storages (two Claid connectors) on one bucket prefix name one object two ways: the
/// second manifest writing it through the other storage is refused at intake all the same.
#[tokio::test]
async fn the_same_object_through_two_storages_on_one_prefix_is_refused_at_intake() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let scenario = Scenario::default()
        .latency(Latency::Fixed(std::time::Duration::from_millis(1500)))
        .storage(s3.connector("alias-s3", "catalog", "raw"))
        .seed(3);
    let keys_dir = tempfile::tempdir().expect("tmp");
    let keys = credentials_file(keys_dir.path());
    let alias = format!(
        "alias:\n  claid_name: alias-s3\n  url: s3://catalog/raw\n  endpoint: {}\n  credentials_file: {}",
        s3.endpoint,
        keys.display()
    );
    let (env, config) = storage_env(&s3, scenario, "", 1).await;
    // `storage_env` nests `extra` under `catalog`: the second storage is appended at the level
    // of `storages`.
    let mut text = std::fs::read_to_string(&config).expect("config");
    let at = text.find("storages:\n").expect("storages") + "storages:\n".len();
    let block: String = alias.lines().map(|l| format!("  {l}\n")).collect();
    text.insert_str(at, &block);
    std::fs::write(&config, text).expect("config");
    refuses_the_second_writer_of_one_object(&s3, &env, &config, "alias").await;
    s3.stop().await;
}

/// Local inputs `shoes/img-N.png` (distinct content, except that with `same_last_two` the
/// last two are the same bytes) and the manifest `shoes.yaml` naming them with outputs
/// `sku-N.jpg`.
fn drop_local_manifest(env: &TestEnv, n: usize, same_last_two: bool) {
    let mut manifest = String::from(
        "operations: { resizing: { width: 32, height: 24, fit: crop } }\noutput: { format: jpeg }\nimages:\n",
    );
    for i in 0..n {
        let width = if same_last_two { i.min(n - 2) } else { i };
        let content = crate::support::png(40 + width as u32, 30);
        env.drop_file(&format!("shoes/img-{i}.png"), &content);
        manifest.push_str(&format!(
            "  - {{ input: shoes/img-{i}.png, output: sku-{i}.jpg }}\n"
        ));
    }
    env.drop_file("shoes.yaml", manifest.as_bytes());
}

/// Every row done, every output in the outbox once at the size asked, nothing uploaded
/// through the synchronous endpoint, and no image billed twice unless its job was counted in
/// doubt (`same_inputs`: jobs whose staged input is another job's, the same bytes, are sent
/// twice by design: two jobs).
fn check_staged_run(env: &TestEnv, n: usize, same_inputs: u64) {
    let report = env.report("shoes");
    let rows = report["jobs"].as_array().expect("rows");
    assert_eq!(rows.len(), n);
    let mut in_doubt = 0;
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["status"], "done", "{row}");
        assert_eq!(row["input"], format!("shoes/img-{i}.png"), "{row}");
        in_doubt += row["in_doubt"].as_u64().unwrap_or(0);
        let out = env.outbox.join(format!("shoes/sku-{i}.jpg"));
        assert_eq!(
            crate::support::dimensions(&out),
            (32, 24),
            "{}",
            out.display()
        );
    }
    assert_eq!(images_under(&env.outbox).len(), n);
    let stats = env.stats();
    assert_eq!(stats.uploads, 0, "no synchronous upload: {stats:?}");
    assert!(
        stats.duplicate_submits <= in_doubt + same_inputs,
        "billed twice {} times, in doubt {in_doubt}: {:?}",
        stats.duplicate_submits,
        stats.submits_by_key
    );
}

#[tokio::test]
async fn local_inputs_are_staged_by_content_sent_in_batches_and_their_objects_deleted() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let (env, _) = storage_env(&s3, quick(), "", 0).await;
    let keys = credentials_file(env.dir.path());
    let storages = storages_yaml("catalog-s3", "s3://catalog/raw", &s3.endpoint, &keys);
    let config = env.config("staging: catalog", &storages);
    drop_local_manifest(&env, 6, true);
    // `plan` counts staged files, not uploads.
    let manifest = env.inbox.join("shoes.yaml");
    let (code, out, err) = cli(&[
        "plan",
        manifest.to_str().expect("utf-8"),
        "--config",
        config.to_str().expect("utf-8"),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("+ 0 uploads")
            && out.contains("6 local files are staged into the storage `catalog`"),
        "{out}"
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    check_staged_run(&env, 6, 1);
    let stats = env.stats();
    assert_eq!(
        stats.batch_images, 6,
        "every image went in a batch: {stats:?}"
    );
    assert_eq!(stats.submits, 0, "{stats:?}");
    assert!(
        stats.batch_submits < 6,
        "fewer requests than images: {stats:?}"
    );
    assert!(
        s3.list_keys("catalog", "raw/staging/").await.is_empty(),
        "the staged objects are deleted once the run ends"
    );
    {
        let store = claid_hotfolder::store::Store::open(&env.state).expect("store");
        assert!(
            store.staging_cleanups().await.expect("read").is_empty(),
            "a run whose cleanup was done is not marked for another"
        );
    }

    // Kept with `staging_delete: false`: one object per distinct content (5 of 6 files).
    let config = env.config("staging: catalog\nstaging_delete: false", &storages);
    env.drop_file("shoes.yaml", b"images:\n  - { input: shoes/img-0.png, output: again-0.jpg }\n  - { input: shoes/img-4.png, output: again-4.jpg }\n  - { input: shoes/img-5.png, output: again-5.jpg }\n");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    // Kept by choice: no warning that `api.staging` is unset, no mark for a later cleanup.
    assert!(!stderr.contains("no longer set"), "{stderr}");
    {
        let store = claid_hotfolder::store::Store::open(&env.state).expect("store");
        assert!(store.staging_cleanups().await.expect("read").is_empty());
    }
    let staged = s3.list_keys("catalog", "raw/staging/").await;
    assert_eq!(
        staged.len(),
        2,
        "img-4 and img-5 are the same bytes: {staged:?}"
    );
    assert!(staged.iter().all(|k| k.ends_with(".png")), "{staged:?}");
    s3.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_while_staging_submitting_and_polling_loses_nothing_and_never_pays_twice() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    const N: usize = 40;
    let scenario = Scenario::default()
        .latency(Latency::Fixed(std::time::Duration::from_millis(1200)))
        .seed(11);
    let (env, _) = storage_env(&s3, scenario, "", 0).await;
    let keys = credentials_file(env.dir.path());
    let storages = storages_yaml("catalog-s3", "s3://catalog/raw", &s3.endpoint, &keys);
    drop_local_manifest(&env, N, false);
    let deadline = std::time::Duration::from_secs(60);
    let staged = || async { s3.list_keys("catalog", "raw/staging/").await.len() };

    // 1. While staging: one input at a time, so the kill lands between two of them.
    let config = env.config("staging: catalog\nmax_in_flight: 1", &storages);
    let mut daemon = env.spawn_daemon(&config, 0);
    crate::support::wait_until_async("some inputs staged", deadline, || async {
        staged().await >= 3
    })
    .await;
    daemon.start_kill().expect("SIGKILL");
    assert_eq!(daemon.wait().await.expect("wait").code(), None);
    let at_kill = staged().await;
    assert!(
        at_kill < N - 1,
        "killed while staging ({at_kill} of {N} staged)"
    );
    assert_eq!(env.stats().batch_submits, 0, "nothing submitted yet");

    // 2. While batches are submitted and at Claid.
    let config = env.config("staging: catalog\nmax_in_flight: 16", &storages);
    let mut daemon = env.spawn_daemon(&config, 1);
    crate::support::wait_until("batches at Claid", deadline, || {
        env.stats().batch_submits >= 2
    })
    .await;
    daemon.start_kill().expect("SIGKILL");
    assert_eq!(daemon.wait().await.expect("wait").code(), None);

    // 3. While they are polled.
    let polls = env.stats().batch_polls;
    let mut daemon = env.spawn_daemon(&config, 2);
    crate::support::wait_until("batches polled", deadline, || {
        env.stats().batch_polls >= polls + 2
    })
    .await;
    daemon.start_kill().expect("SIGKILL");
    assert_eq!(daemon.wait().await.expect("wait").code(), None);

    // 4. To the end.
    let mut daemon = env.spawn_daemon(&config, 3);
    crate::support::wait_until("archived", deadline, || {
        env.archive.join("shoes.yaml").is_file()
    })
    .await;
    crate::support::stop(&mut daemon).await;
    check_staged_run(&env, N, 0);
    assert!(
        staged().await == 0,
        "the staged objects are deleted once the run ends"
    );
    s3.stop().await;
}

/// A TCP forwarder on 127.0.0.1 to an S3 server that can be switched off (new connections are
/// refused, open ones are cut) and on again on the same port: a bucket endpoint that restarts.
struct Switch {
    addr: std::net::SocketAddr,
    target: String,
    forwarding: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The heads of the requests answered by [`Switch::answer`] (not of those forwarded).
    answered: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Switch {
    async fn start(endpoint: &str) -> Switch {
        let target = endpoint.trim_start_matches("http://").to_owned();
        let listener = Switch::listen("127.0.0.1:0".parse().expect("addr"));
        let addr = listener.local_addr().expect("addr");
        let switch = Switch {
            addr,
            target,
            forwarding: std::sync::Mutex::new(None),
            answered: std::sync::Arc::default(),
        };
        switch.forward(listener);
        switch
    }

    fn listen(addr: std::net::SocketAddr) -> tokio::net::TcpListener {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("reuseaddr");
        socket.bind(addr).expect("bind");
        socket.listen(64).expect("listen")
    }

    /// Every accepted connection goes to the target; the connections live in the task's
    /// `JoinSet`, so aborting the task cuts them all.
    fn forward(&self, listener: tokio::net::TcpListener) {
        let target = self.target.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        *self.forwarding.lock().expect("lock") = Some(task);
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn off(&self) {
        let task = self.forwarding.lock().expect("lock").take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    fn on(&self) {
        self.forward(Switch::listen(self.addr));
    }

    /// Switched off, then every request on the same port is answered `status` with S3's
    /// error document for `code`: `403 Forbidden` `AccessDenied` as S3 answers keys it refuses
    /// (rotated or revoked), `503 Service Unavailable` `SlowDown` from a busy bucket; `off`
    /// then `on` forwards again.
    async fn answer(&self, status: &'static str, code: &'static str) {
        self.answer_with(status, code, "").await;
    }

    /// [`Switch::answer`] with `headers` (each line ending in `\r\n`) added to every answer.
    async fn answer_with(&self, status: &'static str, code: &'static str, headers: &'static str) {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{code}</Message></Error>"
        );
        self.answer_raw(status, "application/xml", body, headers)
            .await;
    }

    /// [`Switch::answer`] with a web page, as a server that is no S3 API answers (a proxy's
    /// error page, a console's port).
    async fn answer_page(&self, status: &'static str) {
        let body = format!("<!DOCTYPE html><html><body><h1>{status}</h1></body></html>");
        self.answer_raw(status, "text/html", body, "").await;
    }

    async fn answer_raw(
        &self,
        status: &'static str,
        content_type: &'static str,
        body: String,
        headers: &'static str,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.off().await;
        let listener = Switch::listen(self.addr);
        let answered = self.answered.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let (answered, body) = (answered.clone(), body.clone());
                connections.spawn(async move {
                    // The request's head (HEAD and GET have no body).
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match inbound.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    // A write's body is read whole before the answer, as S3 does: answered
                    // while it is still being sent, the client may see a reset instead.
                    let text = String::from_utf8_lossy(&head).into_owned();
                    let end = text.find("\r\n\r\n").map_or(text.len(), |at| at + 4);
                    let length: usize = text
                        .lines()
                        .find_map(|line| {
                            let (name, value) = line.split_once(':')?;
                            name.eq_ignore_ascii_case("content-length")
                                .then(|| value.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    let mut read = head.len().saturating_sub(end);
                    while read < length {
                        match inbound.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => read += n,
                        }
                    }
                    answered.lock().expect("lock").push(text);
                    // Sent chunked when `headers` say so (no `Content-Length`).
                    let chunked = headers.contains("chunked");
                    let length = if chunked {
                        String::new()
                    } else {
                        format!("Content-Length: {}\r\n", body.len())
                    };
                    let mut answer = format!(
                        "HTTP/1.1 {status}\r\n{headers}Content-Type: {content_type}\r\n{length}Connection: close\r\n\r\n"
                    );
                    if head.starts_with(b"HEAD ") {
                    } else if chunked {
                        answer.push_str(&format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len()));
                    } else {
                        answer.push_str(&body);
                    }
                    let _ = inbound.write_all(answer.as_bytes()).await;
                    let _ = inbound.shutdown().await;
                });
            }
        });
        *self.forwarding.lock().expect("lock") = Some(task);
    }
}

/// How [`Spoiler`] spoils an answer.
#[derive(Clone, Copy, Debug)]
enum Spoil {
    /// The head as the server sent it (its full `Content-Length`), half the body, then the
    /// connection closed.
    Cut,
    /// A whole answer of half the body (`Content-Length` says so): a broken object.
    Short,
    /// `404 NoSuchKey`, as S3 answers an object that is not there.
    NotFound,
    /// `404` without a body to a HEAD (the only spoil of a HEAD), as S3 answers a look at an
    /// object that is not there.
    HeadNotFound,
}

impl Spoil {
    /// The method whose answers it spoils.
    fn method(self) -> &'static str {
        match self {
            Spoil::HeadNotFound => "HEAD",
            Spoil::Cut | Spoil::Short | Spoil::NotFound => "GET",
        }
    }
}

/// A proxy in front of the S3 server that spoils the answers to GETs whose path contains a
/// given part, as its rules say (each rule for so many answers, in order); every other
/// request is forwarded as it came, one request per connection.
struct Spoiler {
    addr: std::net::SocketAddr,
    rules: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<(String, Spoil, usize)>>>,
    spoiled: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Spoiler {
    async fn start(endpoint: &str) -> Spoiler {
        let target = endpoint.trim_start_matches("http://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let rules = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::<(
            String,
            Spoil,
            usize,
        )>::new()));
        let spoiled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (rules_in, spoiled_in) = (rules.clone(), spoiled.clone());
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                let (target, rules, spoiled) =
                    (target.clone(), rules_in.clone(), spoiled_in.clone());
                connections.spawn(async move {
                    let _ = Spoiler::serve(inbound, &target, &rules, &spoiled).await;
                });
            }
        });
        Spoiler {
            addr,
            rules,
            spoiled,
            task,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next `n` GETs whose path contains `part` (once the rules before are spent) are
    /// answered spoiled by `spoil`.
    fn spoil(&self, part: &str, spoil: Spoil, n: usize) {
        self.rules
            .lock()
            .expect("lock")
            .push_back((part.to_owned(), spoil, n));
    }

    /// Forgets the rules not spent yet: every answer is forwarded as it came from now on.
    fn clear(&self) {
        self.rules.lock().expect("lock").clear();
    }

    /// How many answers were spoiled so far.
    fn spoiled(&self) -> usize {
        self.spoiled.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Reads a message's head (up to the blank line) and then `Content-Length` bytes of body
    /// (all until the end with `to_end`).
    async fn read_message(
        stream: &mut tokio::net::TcpStream,
        to_end: bool,
    ) -> std::io::Result<(String, Vec<u8>)> {
        use tokio::io::AsyncReadExt;
        let mut data = Vec::new();
        let mut buf = [0u8; 8192];
        let end = loop {
            if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            data.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&data[..end]).into_owned();
        let mut body = data[end..].to_vec();
        if to_end {
            stream.read_to_end(&mut body).await?;
        } else {
            let length = header_value(&head, "content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            while body.len() < length {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&buf[..n]);
            }
        }
        Ok((head, body))
    }

    async fn serve(
        mut inbound: tokio::net::TcpStream,
        target: &str,
        rules: &std::sync::Mutex<std::collections::VecDeque<(String, Spoil, usize)>>,
        spoiled: &std::sync::atomic::AtomicUsize,
    ) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let (head, body) = Spoiler::read_message(&mut inbound, false).await?;
        let line = head.lines().next().unwrap_or_default().to_owned();
        let mut words = line.split(' ');
        let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let spoil = {
            let mut rules = rules.lock().expect("lock");
            rules
                .front_mut()
                .filter(|(part, spoil, _)| path.contains(part) && method == spoil.method())
                .map(|rule| {
                    rule.2 -= 1;
                    (rule.1, rule.2 == 0)
                })
                .map(|(spoil, spent)| {
                    if spent {
                        rules.pop_front();
                    }
                    spoil
                })
        };
        // One request per connection: the server closes after its answer.
        let mut forwarded: String = head
            .trim_end()
            .lines()
            .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
            .map(|l| format!("{l}\r\n"))
            .collect();
        forwarded.push_str("Connection: close\r\n\r\n");
        let mut outbound = tokio::net::TcpStream::connect(target).await?;
        outbound.write_all(forwarded.as_bytes()).await?;
        outbound.write_all(&body).await?;
        let (answer_head, answer_body) = Spoiler::read_message(&mut outbound, true).await?;
        let answer = match spoil {
            None => [answer_head.into_bytes(), answer_body].concat(),
            Some(spoil) => {
                spoiled.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let half = &answer_body[..answer_body.len() / 2];
                match spoil {
                    Spoil::Cut => [answer_head.into_bytes(), half.to_vec()].concat(),
                    Spoil::Short => {
                        let head: String = answer_head
                            .trim_end()
                            .lines()
                            .map(|l| {
                                if l.to_ascii_lowercase().starts_with("content-length:") {
                                    format!("Content-Length: {}\r\n", half.len())
                                } else {
                                    format!("{l}\r\n")
                                }
                            })
                            .collect();
                        [format!("{head}\r\n").into_bytes(), half.to_vec()].concat()
                    }
                    Spoil::HeadNotFound => {
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_vec()
                    }
                    Spoil::NotFound => {
                        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message></Error>";
                        format!(
                            "HTTP/1.1 404 Not Found\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .into_bytes()
                    }
                }
            }
        };
        inbound.write_all(&answer).await?;
        inbound.shutdown().await
    }
}

impl Drop for Spoiler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The value of the header `name` (lowercase) in an HTTP message's head.
fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then_some(value.trim())
    })
}

/// [`storage_env`] whose daemon reaches the bucket through a [`Spoiler`], storage outputs
/// under `out/` (`output_local_copy` as `local_copy` says), and a manifest `shoes.yaml`
/// of `n` storage inputs, sent one by one.
async fn spoiled_env(s3: &S3Server, n: usize, local_copy: bool) -> (TestEnv, Spoiler, PathBuf) {
    let (env, _) = storage_env(s3, quick(), "", n).await;
    let spoiler = Spoiler::start(&s3.endpoint).await;
    let keys = credentials_file(env.dir.path());
    let mut storages = storages_yaml("catalog-s3", "s3://catalog/raw", &spoiler.endpoint(), &keys);
    storages.push_str(&format!("    output_local_copy: {local_copy}\n"));
    let config = env.config("batch: { max_images: 1 }", &storages);
    let mut manifest =
        String::from("output: { format: png, destination: storage://catalog/out/ }\nimages:\n");
    for i in 0..n {
        manifest.push_str(&format!("  - storage://catalog/in/sku-{i}.png\n"));
    }
    env.drop_file("shoes.yaml", manifest.as_bytes());
    (env, spoiler, config)
}

/// Reads of output objects Claid wrote that are cut short (the connection closed mid-body) or
/// answered "not found" just after the object's HEAD found it are read again, not failed:
/// every image done, each billed once. (A cut read failed the job `storage-unreachable` in
/// under a second and one 404 failed it `object-missing`; either way the only way on was a
/// replay, which billed the image again, uncounted.)
#[tokio::test(flavor = "multi_thread")]
async fn issue15_output_object_reads_cut_short_or_not_found_are_read_again_not_failed() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    for local_copy in [false, true] {
        let (env, spoiler, config) = spoiled_env(&s3, 1, local_copy).await;
        // More cuts in a row than the storage client retries a read by itself (3).
        spoiler.spoil("/out/", Spoil::Cut, 5);
        spoiler.spoil("/out/", Spoil::NotFound, 2);
        let (code, stderr) = env.run_once(&config).await;
        assert_eq!(code, 0, "local copy {local_copy}: {stderr}");
        assert_eq!(spoiler.spoiled(), 7, "every fault was met: {stderr}");
        let report = env.report("shoes");
        for row in report["jobs"].as_array().expect("rows") {
            assert_eq!(row["status"], "done", "{row}\n{stderr}");
        }
        let stats = env.stats();
        assert_eq!(stats.submits, 1, "{stats:?}");
        for key in s3.list_keys("catalog", "raw/out/").await {
            s3.delete_object("catalog", &key).await;
        }
    }
    s3.stop().await;
}

/// An output object that reads broken (half its bytes) at every read of a run fails the job
/// `result-mismatch`, naming the replay; the object Claid wrote and billed is kept, so the
/// replay reads it again instead of sending the image again: done, one submit in all.
/// (The replay sent it again: billed twice, not counted in doubt.)
#[tokio::test(flavor = "multi_thread")]
async fn issue15_an_output_object_that_read_broken_is_read_again_by_the_replay_not_billed_again() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let (env, spoiler, config) = spoiled_env(&s3, 1, true).await;
    spoiler.spoil("/out/", Spoil::Short, 3);
    let replayed = fails_then_the_replay_delivers_without_a_new_bill(
        &env,
        &config,
        (
            "result-mismatch",
            "`replay --failed` looks at it again, no new bill",
        ),
        || {},
    )
    .await;
    assert!(
        replayed.contains("1 of them made and billed but not written"),
        "{replayed}"
    );
    let object = s3
        .get_object("catalog", "raw/out/shoes/sku-0.png")
        .await
        .expect("object");
    let local = std::fs::read(env.outbox.join("shoes/sku-0.png")).expect("local copy");
    assert_eq!(local, object, "the local copy is Claid's object");
    s3.stop().await;
}

/// An output object that every look of a run answers "not found" (a proxy in front of the
/// bucket, here) fails the job `object-missing`, naming the replay; the replay looks for the
/// object first and, finding Claid's edit there, is done with it: one submit in all. (The
/// replay sent the image again: billed twice, not counted in doubt.)
#[tokio::test(flavor = "multi_thread")]
async fn issue15_an_output_object_not_found_is_looked_for_again_by_the_replay_not_billed_again() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let (env, spoiler, config) = spoiled_env(&s3, 1, false).await;
    // Every look of the run at the object (and the one before its submit, truly empty).
    spoiler.spoil("/out/", Spoil::HeadNotFound, 1000);
    fails_then_the_replay_delivers_without_a_new_bill(
        &env,
        &config,
        (
            "object-missing",
            "`replay --failed` looks for the object in the bucket again first",
        ),
        || spoiler.clear(),
    )
    .await;
    assert_eq!(
        env.report("shoes")["jobs"][0]["object"],
        "storage://catalog-s3/out/shoes/sku-0.png"
    );
    s3.stop().await;
}

/// `run --once` of a [`spoiled_env`] of one image: the image fails `code`, its reason naming
/// the replay (`hint`); then `mend` (the bucket's answers put right), `replay --failed` and
/// `run --once` again: done, with one submit in all. Returns what the replay printed.
async fn fails_then_the_replay_delivers_without_a_new_bill(
    env: &TestEnv,
    config: &Path,
    (failure, hint): (&str, &str),
    mend: impl FnOnce(),
) -> String {
    let (code, stderr) = env.run_once(config).await;
    assert_eq!(code, 2, "{stderr}");
    let report = env.report("shoes");
    let row = &report["jobs"][0];
    assert_eq!(row["status"], "failed", "{row}");
    let reason = row["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with(failure), "{row}");
    assert!(reason.contains(hint), "{row}");
    mend();
    let config_arg = config.to_str().expect("utf-8");
    let (code, stdout, err) =
        crate::support::cli(&["replay", "--failed", "--config", config_arg]).await;
    assert_eq!(code, 0, "{stdout}{err}");
    let (code, stderr) = env.run_once(config).await;
    assert_eq!(code, 0, "{stderr}");
    let report = env.report("shoes");
    assert_eq!(report["jobs"][0]["status"], "done", "{report:#}");
    let stats = env.stats();
    assert_eq!(stats.submits, 1, "one bill in all: {stats:?}");
    stdout
}

/// Keys rotated in a storage's credentials file (the same file, other keys in it) are named
/// by a SIGHUP as not in force until a restart, like a rotated API key: the bucket client
/// keeps the keys it started with, and a reload that said "Reloaded" without a word let an
/// operator believe the new keys were used. A file deleted or broken is refused by the reload.
#[tokio::test(flavor = "multi_thread")]
async fn rotated_storage_keys_are_named_by_a_reload_as_waiting_for_a_restart() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let (env, config) = storage_env(&s3, Scenario::default(), "", 0).await;
    let mut daemon = env.spawn_daemon(&config, 0);
    let deadline = std::time::Duration::from_secs(30);
    // The keys in force are read before the daemon says it watches the inbox.
    crate::support::wait_until("the daemon watches", deadline, || {
        env.daemon_log(0).contains("Watching the inbox")
    })
    .await;
    std::fs::write(
        env.dir.path().join("s3-keys.yaml"),
        "access_key_id: AKIAROTATED\nsecret_access_key: rotated-secret\n",
    )
    .expect("rotated keys");
    crate::support::signal(&daemon, "-HUP");
    crate::support::wait_until("the rotated keys named", deadline, || {
        env.daemon_log(0).lines().any(|l| {
            l.contains("NOT in force")
                && l.contains("storages.catalog.credentials_file (the keys in it changed)")
        })
    })
    .await;
    assert!(!env.daemon_log(0).contains("rotated-secret"));
    // A credentials file deleted (or broken) is refused by the reload, as any file a restart
    // would refuse: it was taken with the same warning, and the next restart stopped with 64.
    let refused = |log: &str| log.matches("Config reload refused").count();
    for (broken, told) in [
        (Some("access_key_id: [broken\n"), "s3-keys.yaml"),
        (None, "s3-keys.yaml"),
    ] {
        let before = refused(&env.daemon_log(0));
        let keys = env.dir.path().join("s3-keys.yaml");
        match broken {
            Some(text) => std::fs::write(&keys, text).expect("broken keys"),
            None => std::fs::remove_file(&keys).expect("keys deleted"),
        }
        crate::support::signal(&daemon, "-HUP");
        crate::support::wait_until("the reload refused", deadline, || {
            refused(&env.daemon_log(0)) > before
        })
        .await;
        assert!(
            env.daemon_log(0)
                .lines()
                .any(|l| l.contains("storages.catalog") && l.contains(told)),
            "names the storage and its file:\n{}",
            env.daemon_log(0)
        );
    }
    crate::support::stop(&mut daemon).await;
    s3.stop().await;
}

/// A bucket endpoint that does not answer when the daemon starts (an S3 server still starting
/// at boot) is waited out: the start check is retried with backoff (told once) instead of
/// refusing the start with exit 69, and once the endpoint answers the daemon is ready and
/// delivers. A connector Claid does not have still fails the start at once (64).
#[tokio::test(flavor = "multi_thread")]
async fn a_bucket_away_at_start_is_waited_out_not_a_refused_start() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let (env, _) = storage_env(&s3, Scenario::default(), "", 1).await;
    let switch = Switch::start(&s3.endpoint).await;
    switch.off().await;
    let keys = credentials_file(env.dir.path());
    let storages = storages_yaml("catalog-s3", "s3://catalog/raw", &switch.endpoint(), &keys);
    let config = env.config("unreachable_timeout: 5m", &storages);
    let mut daemon = env.spawn_daemon(&config, 0);
    let log = || env.daemon_log(0);
    let deadline = std::time::Duration::from_secs(60);
    crate::support::wait_until("the start check waits", deadline, || {
        log().contains("Cannot check the storages yet")
    })
    .await;
    assert!(
        daemon.try_wait().expect("status").is_none(),
        "still running:\n{}",
        log()
    );
    assert!(!log().contains("Ready"), "{}", log());
    switch.on();
    crate::support::wait_until("the daemon is ready", deadline, || {
        log().contains("The storages answer; starting") && log().contains("Ready")
    })
    .await;
    env.drop_file(
        "shoes.yaml",
        b"output: { format: jpeg }\nimages:\n  - storage://catalog/in/sku-0.png\n",
    );
    crate::support::wait_until("the image is delivered", deadline, || {
        env.outbox.join("shoes/sku-0.jpg").is_file()
    })
    .await;
    crate::support::stop(&mut daemon).await;
    assert_eq!(
        log().matches("Cannot check the storages yet").count(),
        1,
        "told once"
    );

    let missing = storages_yaml("catalog-s4", "s3://catalog/raw", &s3.endpoint, &keys);
    let (code, stderr) = env
        .run_once(&env.config("unreachable_timeout: 5m", &missing))
        .await;
    assert_eq!(code, 64, "{stderr}");

    // Nor is an API that no TLS handshake can reach (`https://` on a plain-HTTP server): the
    // start fails at once (69, naming it), not after half of `api.unreachable_timeout`.
    let plain = env.emulator.base_url();
    let good = storages_yaml("catalog-s3", "s3://catalog/raw", &s3.endpoint, &keys);
    let text = std::fs::read_to_string(env.config("unreachable_timeout: 5m", &good))
        .expect("config")
        .replace(&plain, &plain.replacen("http://", "https://", 1));
    let https = env.dir.path().join("https-on-plain.yaml");
    std::fs::write(&https, text).expect("config");
    let (code, stderr) = tokio::time::timeout(deadline, env.run_once(&https))
        .await
        .expect("the start fails at once");
    assert_eq!(code, 69, "{stderr}");
    assert!(stderr.contains("TLS handshake failed"), "{stderr}");
    assert!(
        !stderr.contains("Cannot check the storages yet"),
        "{stderr}"
    );

    // The same for a bucket endpoint written `https://` on a plain-HTTP server, with a hint
    // that says so (it was "check that the S3 endpoint is reachable", after the wait).
    let https_bucket = s3.endpoint.replacen("http://", "https://", 1);
    let storages = storages_yaml("catalog-s3", "s3://catalog/raw", &https_bucket, &keys);
    let (code, stderr) = tokio::time::timeout(
        deadline,
        env.run_once(&env.config("unreachable_timeout: 5m", &storages)),
    )
    .await
    .expect("the start fails at once");
    assert_eq!(code, 69, "{stderr}");
    assert!(
        stderr.contains("does not answer in TLS") && stderr.contains("http://"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("Cannot check the storages yet"),
        "{stderr}"
    );
    s3.stop().await;
}

/// `run --once` whose bucket endpoint never answers at start waits the whole
/// `api.unreachable_timeout` before it ends 69 (it gave up at about half of it: once the next
/// whole backoff would have passed the timeout).
#[tokio::test(flavor = "multi_thread")]
async fn the_start_check_waits_the_whole_unreachable_timeout() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let (env, _) = storage_env(&s3, Scenario::default(), "", 1).await;
    let switch = Switch::start(&s3.endpoint).await;
    switch.off().await;
    let keys = credentials_file(env.dir.path());
    let storages = storages_yaml("catalog-s3", "s3://catalog/raw", &switch.endpoint(), &keys);
    let config = env.config("unreachable_timeout: 6s", &storages);
    let started = std::time::Instant::now();
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 69, "{stderr}");
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(6),
        "gave up after {:?}: {stderr}",
        started.elapsed()
    );
    s3.stop().await;
}

/// A bucket endpoint that refuses connections while a drop's local files are staged (an S3
/// server restarting) is an outage, waited out with backoff like the API's: more failed
/// attempts than a transient failure is allowed (10) fail nothing, and once the endpoint
/// answers again every file is staged, edited and delivered.
#[tokio::test(flavor = "multi_thread")]
async fn a_bucket_endpoint_refusing_connections_while_staging_is_waited_out() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let (env, switch, config) =
        switched_env(&s3, quick(), 0, "staging: catalog\nmax_in_flight: 1").await;
    let deadline = std::time::Duration::from_secs(60);
    // Each retry is logged at debug level: the outage itself is told once.
    let mut daemon = env.spawn_daemon_with(
        &config,
        0,
        &[("RUST_LOG", "info,claid_hotfolder::pipeline::job=debug")],
    );
    crate::support::wait_until("the start checked the bucket", deadline, || {
        env.daemon_log(0).contains("Ready")
    })
    .await;
    switch.off().await;
    drop_local_manifest(&env, 3, false);
    let retries = || {
        env.daemon_log(0)
            .matches("Cannot stage the input; retrying")
            .count()
    };
    crate::support::wait_until(
        "more retries than a transient failure gets",
        deadline,
        || retries() > 12,
    )
    .await;
    let log = env.daemon_log(0);
    assert!(
        !log.contains("staging-failed"),
        "nothing failed during the outage:\n{log}"
    );
    assert_eq!(
        log.matches("A storage's bucket does not answer").count(),
        1,
        "the outage is told once, not per retry:\n{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains(" WARN ") && l.contains("Cannot stage the input")),
        "retries during an outage are not warnings:\n{log}"
    );
    assert!(
        log.contains("no answer from 127.0.0.1:"),
        "the cause names the endpoint, not object_store's whole message:\n{log}"
    );
    switch.on();
    crate::support::wait_until("the drop is archived", deadline, || {
        env.archive.join("shoes.yaml").is_file()
    })
    .await;
    assert!(
        env.daemon_log(0)
            .contains("The storage's bucket answers again"),
        "{}",
        env.daemon_log(0)
    );
    crate::support::stop(&mut daemon).await;
    check_staged_run(&env, 3, 0);
    s3.stop().await;
}

#[tokio::test]
async fn the_embedded_emulator_serves_the_configs_own_storages_as_its_connectors() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    s3.create_bucket("catalog").await;
    s3.put_object("catalog", "raw/in/sku-0.png", &crate::support::png(40, 30))
        .await;
    // The env's own emulator has no connector: only the embedded one, started from the
    // config's `storages`, can serve `catalog-s3`.
    let env = TestEnv::new(quick()).await;
    let keys = credentials_file(env.dir.path());
    let storages = storages_yaml("catalog-s3", "s3://catalog/raw", &s3.endpoint, &keys);
    let text = format!(
        "api:\n  base_url: embedded\nfolders:\n  inbox: {}\n  outbox: {}\n  archive: {}\n  rejected: {}\n  state: {}\nwatch: {{ settle: 100ms, rescan: 500ms }}\nadmin:\n  socket: {}\n{storages}",
        env.inbox.display(),
        env.outbox.display(),
        env.archive.display(),
        env.rejected.display(),
        env.state.display(),
        env.socket().display(),
    );
    let config = env.dir.path().join("embedded.yaml");
    std::fs::write(&config, text).expect("config");
    env.drop_file(
        "shoes.yaml",
        b"output: { destination: storage://catalog/out/ }\nimages:\n  - storage://catalog/in/sku-0.png\n",
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("Checked the storages"), "{stderr}");
    assert_eq!(
        s3.list_keys("catalog", "raw/out/").await,
        ["raw/out/shoes/sku-0.jpg"]
    );
    assert_eq!(env.stats().requests, 0, "the env's emulator was not used");
    s3.stop().await;
}

/// An HTTP server on 127.0.0.1 that answers every request with `status` and an HTML page,
/// as a web console's port or a proxy's default page does (`chunked`: sent chunked, without
/// `Content-Length`, as many do). Returns its `http://` address.
async fn not_s3(status: &'static str, chunked: bool) -> (String, tokio::task::JoinHandle<()>) {
    crate::support::raw_http_server(move |_| {
        let body = "<html><body>Welcome</body></html>";
        if chunked {
            return format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/html\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                body.len()
            )
            .into_bytes();
        }
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    })
    .await
}

/// A storage `endpoint` that answers HTTP but is not an S3 API is a configuration error
/// (64) that names the endpoint as the thing to fix: one that answers 200 to everything
/// (it passed the listing, then told every output "already there": `skip` kept nothing
/// and reported success), one that does so chunked, without `Content-Length` (told as an
/// endpoint that does not answer, 69, and waited out; acceptance run), and one that answers
/// 404 (told as a bucket away, 69, and waited out; systemd restarted the daemon every 5 s).
#[tokio::test(flavor = "multi_thread")]
async fn validate_refuses_an_endpoint_that_is_not_an_s3_api() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let env = TestEnv::new(quick().storage(s3.connector("catalog-s3", "catalog", "raw"))).await;
    let keys = credentials_file(env.dir.path());
    for (status, chunked, needle) in [
        ("200 OK", false, "does not answer as an S3 server"),
        ("200 OK", true, "does not answer as an S3 server"),
        ("404 Not Found", false, "is not an S3 API"),
    ] {
        let (endpoint, served) = not_s3(status, chunked).await;
        let storages = storages_yaml("catalog-s3", "s3://catalog/raw", &endpoint, &keys);
        let config = env.config("", &storages);
        let (code, stdout, stderr) = cli(&["validate", config.to_str().expect("utf-8")]).await;
        assert_eq!(code, 64, "{status}: {stdout}{stderr}");
        assert!(
            stdout.contains(needle) && stdout.contains("endpoint"),
            "{status}: {stdout}"
        );
        let (code, stderr) = env.run_once(&config).await;
        assert_eq!(code, 64, "{status}: {stderr}");
        served.abort();
    }
    s3.stop().await;
}

/// A bucket server that takes the connection and never answers (a hung server, a proxy
/// holding the connection) is told by `validate` in the daemon's own words within the
/// probe's 20 s, as an outage (69), not after the storage client's whole request timeout
/// and retries in its wording.
#[tokio::test(flavor = "multi_thread")]
async fn validate_tells_a_bucket_server_that_never_answers_as_an_outage() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}", silent.local_addr().expect("addr"));
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let env = TestEnv::new(quick().storage(s3.connector("catalog-s3", "catalog", "raw"))).await;
    let keys = credentials_file(env.dir.path());
    let storages = storages_yaml("catalog-s3", "s3://catalog/raw", &endpoint, &keys);
    let config = env.config("", &storages);
    let (code, stdout, stderr) = cli(&["validate", config.to_str().expect("utf-8")]).await;
    held.abort();
    assert_eq!(code, 69, "{stdout}{stderr}");
    assert!(
        stdout.contains("did not answer a listing within 20 s")
            && stdout.contains("s3://catalog/raw"),
        "{stdout}"
    );
    s3.stop().await;
}

#[tokio::test]
async fn a_connector_pointing_elsewhere_than_its_storage_stops_the_start_with_64() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    s3.create_bucket("catalog").await;
    // Claid's connector points at `other/`, the daemon's storage at `raw/`: Claid would write
    // outputs where the daemon does not look.
    let env = TestEnv::new(quick().storage(s3.connector("catalog-s3", "catalog", "other"))).await;
    let keys = credentials_file(env.dir.path());
    let storages = storages_yaml("catalog-s3", "s3://catalog/raw", &s3.endpoint, &keys);
    let config = env.config("", &storages);
    let (code, stdout, _) = cli(&["validate", config.to_str().expect("utf-8")]).await;
    assert_eq!(code, 64, "{stdout}");
    assert!(
        stdout.contains("s3://catalog/other") && stdout.contains("s3://catalog/raw"),
        "{stdout}"
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("storages.catalog"), "{stderr}");

    // A connector of another type with the storage's bucket and path: a gcs connector reads
    // another bucket than an s3:// storage, and a web folder is no bucket.
    let http = reqwest::Client::new();
    let connectors = format!("{}/storage/storages", env.emulator.base_url());
    for body in [
        serde_json::json!({"name": "catalog-gcs", "type": "gcs", "parameters": {"bucket": "catalog", "path": "raw", "credentials": {"access_key": "GOOG1", "secret_access_key": "s"}}}),
        serde_json::json!({"name": "catalog-web", "type": "web_folder", "parameters": {"base_url": "https://cdn.example/raw/"}}),
    ] {
        let answer = http
            .post(&connectors)
            .bearer_auth("test-key")
            .json(&body)
            .send()
            .await
            .expect("connector");
        assert!(answer.status().is_success(), "{:?}", answer.text().await);
    }
    for (claid_name, needle) in [
        ("catalog-gcs", "gs://catalog/raw"),
        ("catalog-web", "of type web_folder"),
    ] {
        let storages = storages_yaml(claid_name, "s3://catalog/raw", &s3.endpoint, &keys);
        let config = env.config("", &storages);
        let (code, stdout, _) = cli(&["validate", config.to_str().expect("utf-8")]).await;
        assert_eq!(code, 64, "{stdout}");
        assert!(stdout.contains(needle), "{stdout}");
    }
    s3.stop().await;
}

/// A crash between a run's end and the deletion of its staged objects (or a bucket that
/// refused the deletes) leaves the run marked in the store; the next start deletes them and
/// clears the mark. The state such a crash leaves is made here by hand: a run that ended with
/// `staging_delete: false` (its objects stay) whose record is then marked.
#[tokio::test(flavor = "multi_thread")]
async fn staged_objects_a_crash_kept_from_being_deleted_are_deleted_at_the_next_start() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let (env, _) = storage_env(&s3, quick(), "", 0).await;
    let keys = credentials_file(env.dir.path());
    let storages = storages_yaml("catalog-s3", "s3://catalog/raw", &s3.endpoint, &keys);
    drop_local_manifest(&env, 3, false);
    let keep = env.config("staging: catalog\nstaging_delete: false", &storages);
    let (code, stderr) = env.run_once(&keep).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(s3.list_keys("catalog", "raw/staging/").await.len(), 3);
    {
        let store = claid_hotfolder::store::Store::open(&env.state).expect("store");
        let (id, _) = store
            .latest_run("shoes.yaml")
            .await
            .expect("read")
            .expect("the run");
        store.set_staging_cleanup(id, true).await.expect("mark");
        store.flush().await.expect("flush");
        assert_eq!(store.staging_cleanups().await.expect("read"), vec![id]);
    }
    let delete = env.config("staging: catalog", &storages);
    let mut daemon = env.spawn_daemon(&delete, 0);
    let deadline = std::time::Duration::from_secs(60);
    crate::support::wait_until_async("the staged objects deleted", deadline, || async {
        s3.list_keys("catalog", "raw/staging/").await.is_empty()
    })
    .await;
    crate::support::stop(&mut daemon).await;
    assert!(
        env.daemon_log(0).contains("staging_cleanups=1"),
        "{}",
        env.daemon_log(0)
    );
    let store = claid_hotfolder::store::Store::open(&env.state).expect("store");
    assert!(
        store.staging_cleanups().await.expect("read").is_empty(),
        "the mark is cleared once the objects are gone"
    );
    s3.stop().await;
}

/// A storage output whose key would hold a space (a folder of the inbox named with one)
/// is refused at intake, naming the object and the fix: Claid refuses such a destination,
/// so nothing is submitted.
#[tokio::test]
async fn a_storage_output_key_with_a_space_is_refused_before_any_spend() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let (env, config) = storage_env(&s3, quick(), "", 1).await;
    env.drop_file(
        "Spring Sale/shoes.yaml",
        b"output: { destination: storage://catalog/out/ }\nimages:\n  - storage://catalog/in/sku-0.png\n",
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 2, "the manifest is rejected: {stderr}");
    let text = std::fs::read_to_string(env.rejected.join("Spring Sale/shoes.yaml.error.txt"))
        .expect("error file");
    assert!(text.contains("has a space"), "{text}");
    assert!(text.contains("out/Spring Sale/shoes/sku-0.jpg"), "{text}");
    let stats = env.stats();
    assert_eq!(stats.submits + stats.batch_submits, 0, "nothing submitted");
    s3.stop().await;
}

/// `run --once` started in the background, its stderr going to `once.log` in the test's
/// folder (read while it runs).
fn spawn_run_once(env: &TestEnv, config: &Path) -> (tokio::process::Child, PathBuf) {
    let log_path = env.dir.path().join("once.log");
    let child = tokio::process::Command::new(crate::support::bin())
        .args(["run", "--once", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("run --once starts");
    (child, log_path)
}

/// The bucket's endpoint goes away after Claid wrote the outputs, before the daemon checked
/// them: an outage, not a failure (failed jobs would have `replay` bill them again). `run
/// --once` waits it out until `api.unreachable_timeout`, then ends (exit 69, naming the
/// bucket's endpoint) with the jobs left open; the next run checks the objects and delivers
/// them without a second submit.
#[tokio::test(flavor = "multi_thread")]
async fn run_once_gives_up_on_a_bucket_away_after_claid_wrote_and_the_next_run_delivers() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let scenario = Scenario::default()
        .latency(Latency::Fixed(std::time::Duration::from_secs(2)))
        .seed(7);
    let (env, switch, config) = switched_env(&s3, scenario, 2, "unreachable_timeout: 4s").await;
    env.drop_file(
        "shoes.yaml",
        b"output: { format: jpeg, destination: storage://catalog/out/ }\nimages:\n  - storage://catalog/in/sku-0.png\n  - storage://catalog/in/sku-1.png\n",
    );
    let (mut once, log_path) = spawn_run_once(&env, &config);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = std::time::Duration::from_secs(60);
    // The tasks take 2 s at Claid: the endpoint goes away before their objects are checked.
    crate::support::wait_until("the images are submitted", deadline, || {
        env.stats().submits + env.stats().batch_submits > 0
            && env.stats().batch_images + env.stats().submits >= 2
    })
    .await;
    switch.off().await;
    let status = tokio::time::timeout(deadline, once.wait())
        .await
        .expect("run --once ends")
        .expect("exit status");
    assert_eq!(status.code(), Some(69), "{}", log());
    assert!(
        log().contains(&switch.addr.to_string()),
        "the bucket's endpoint is named:\n{}",
        log()
    );
    assert!(!log().contains("Job failed"), "nothing failed:\n{}", log());
    assert!(
        log().contains("A storage's bucket stayed unreachable (the Claid API answers)")
            && !log().contains("The Claid API stayed unreachable"),
        "the bucket is blamed, not the API:\n{}",
        log()
    );
    // The storage client's own retry lines (one per retry, at info) stay out of the log, also
    // with `RUST_LOG=info`: the daemon tells the outage once.
    assert!(
        !log().contains("object_store::"),
        "no line of the storage client's own:\n{}",
        log()
    );
    switch.on();
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    let report = env.report("shoes");
    let rows = report["jobs"].as_array().expect("rows");
    assert!(rows.iter().all(|r| r["status"] == "done"), "{report:#}");
    let stats = env.stats();
    assert_eq!(
        stats.batch_images + stats.submits,
        2,
        "each image billed once"
    );
    assert_eq!(stats.duplicate_submits, 0);
    s3.stop().await;
}

/// A storage taken out of the config (a restart after a kill) while Claid was writing its
/// objects: the jobs wait for it, named (`run --once` ends 64, a config problem, at once,
/// saying to put the entry back; it ended 69 at `api.unreachable_timeout`, as for an outage),
/// instead of failing as `storage-unreachable`, which had a replay or a second drop bill the
/// written objects again. The images still queued (behind the canary) are not sent meanwhile
/// (they were sent and billed while the run ended saying the storage was held: acceptance
/// run). With the entry back, the next run checks the objects and delivers them all, each
/// billed once.
#[tokio::test(flavor = "multi_thread")]
async fn a_storage_taken_out_of_the_config_while_claid_writes_holds_its_jobs_not_fails_them() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let scenario = Scenario::default()
        .latency(Latency::Fixed(std::time::Duration::from_secs(2)))
        .seed(7);
    let (env, _) = storage_env(&s3, scenario, "", 4).await;
    let keys = credentials_file(env.dir.path());
    let storages = storages_yaml("catalog-s3", "s3://catalog/raw", &s3.endpoint, &keys);
    let config = env.config("unreachable_timeout: 4s", &storages);
    env.drop_file(
        "shoes.yaml",
        b"output: { format: jpeg, destination: storage://catalog/out/ }\nimages:\n  - storage://catalog/in/sku-0.png\n  - storage://catalog/in/sku-1.png\n  - storage://catalog/in/sku-2.png\n  - storage://catalog/in/sku-3.png\n",
    );
    let (mut once, log_path) = spawn_run_once(&env, &config);
    let deadline = std::time::Duration::from_secs(60);
    // Killed once the batch id is recorded (Claid writes the objects meanwhile).
    crate::support::wait_until("the images are submitted and recorded", deadline, || {
        std::fs::read_to_string(&log_path).is_ok_and(|log| log.contains("Batch submitted"))
    })
    .await;
    once.start_kill().expect("kill -9");
    let _ = once.wait().await;
    let without = env.config("unreachable_timeout: 4s", "");
    let (code, stderr) = env.run_once(&without).await;
    assert_eq!(code, 64, "{stderr}");
    assert!(!stderr.contains("Job failed"), "nothing failed:\n{stderr}");
    assert!(
        stderr.contains("put its `storages` entry back"),
        "the missing storage is named:\n{stderr}"
    );
    let stats = env.stats();
    assert_eq!(
        stats.batch_images + stats.submits,
        2,
        "only the canary was sent: {stats:?}"
    );
    // The entry put back (the config file is written again: `env.config` has one path).
    let config = env.config("unreachable_timeout: 4s", &storages);
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    let report = env.report("shoes");
    let rows = report["jobs"].as_array().expect("rows");
    assert!(rows.iter().all(|r| r["status"] == "done"), "{report:#}");
    let stats = env.stats();
    assert_eq!(
        stats.batch_images + stats.submits,
        4,
        "each image billed once"
    );
    assert_eq!(stats.duplicate_submits, 0);
    s3.stop().await;
}

/// The staging bucket goes away after the inputs were staged, before their batches are sent:
/// the look at each staged object before its submit waits the outage out instead of sending
/// a batch whose inputs Claid may not read (every image of it failed, billed or not). `run
/// --once` ends at `api.unreachable_timeout` (exit 69) with only the canary sent and nothing
/// failed; the next run sends the rest, each image once.
#[tokio::test(flavor = "multi_thread")]
async fn staged_inputs_are_not_submitted_while_the_staging_bucket_is_away() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let scenario = Scenario::default()
        .latency(Latency::Fixed(std::time::Duration::from_secs(2)))
        .seed(9);
    let (env, switch, config) = switched_env(
        &s3,
        scenario,
        0,
        "staging: catalog\nunreachable_timeout: 4s",
    )
    .await;
    drop_local_manifest(&env, 6, false);
    let (mut once, log_path) = spawn_run_once(&env, &config);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = std::time::Duration::from_secs(60);
    // The canary (2 images) is at Claid for 2 s; the other batches wait for it.
    crate::support::wait_until("the canary is submitted", deadline, || {
        env.stats().batch_submits > 0
    })
    .await;
    switch.off().await;
    let status = tokio::time::timeout(deadline, once.wait())
        .await
        .expect("run --once ends")
        .expect("exit status");
    assert_eq!(status.code(), Some(69), "{}", log());
    assert!(!log().contains("Job failed"), "nothing failed:\n{}", log());
    let stats = env.stats();
    assert_eq!(
        (stats.batch_submits, stats.batch_images),
        (1, 2),
        "only the canary went while the bucket was away: {stats:?}\n{}",
        log()
    );
    switch.on();
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    check_staged_run(&env, 6, 0);
    s3.stop().await;
}

/// The staging bucket does not exist (NoSuchBucket: deleted, or a proxy answering for another)
/// while local inputs are staged: every upload is answered 404, which is the bucket's, not
/// the object's. The staging waits it out as an outage of the storage (an ERROR naming the
/// bucket, nothing sent to Claid, nothing failed), and once the bucket is back every input is
/// staged and delivered. (The uploads were retried a few times and the whole drop failed
/// `staging-failed`.)
#[tokio::test(flavor = "multi_thread")]
async fn issue15_staging_into_a_bucket_that_is_gone_waits_for_it_and_fails_nothing() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let (env, switch, config) = switched_env(&s3, quick(), 0, "staging: catalog").await;
    let mut daemon = env.spawn_daemon(&config, 0);
    let deadline = std::time::Duration::from_secs(60);
    crate::support::wait_until("ready", deadline, || env.daemon_log(0).contains("Ready")).await;
    switch.answer("404 Not Found", "NoSuchBucket").await;
    drop_local_manifest(&env, 4, false);
    crate::support::wait_until("the missing bucket named as an outage", deadline, || {
        env.daemon_log(0)
            .contains("what needs it waits (recreate the bucket")
    })
    .await;
    let log = env.daemon_log(0);
    assert!(!log.contains("Job failed"), "nothing failed:\n{log}");
    let stats = env.stats();
    assert_eq!(stats.submits + stats.batch_images, 0, "{stats:?}");
    // The bucket is back.
    switch.off().await;
    switch.on();
    crate::support::wait_until("the report", std::time::Duration::from_secs(120), || {
        env.outbox.join("shoes.report.json").exists()
    })
    .await;
    check_staged_run(&env, 4, 0);
    crate::support::stop(&mut daemon).await;
    s3.stop().await;
}

/// The bucket refuses the daemon's keys (rotated, revoked) after Claid wrote the outputs,
/// before the daemon checked them: the checks wait as for an outage, nothing fails (a failed
/// job would have a replay or a second drop bill the written object again). `run --once`
/// ends at `api.unreachable_timeout` with the jobs left open, naming the refusal, with 77
/// (access refused, as at the start's check; it said 69, "try again later");
/// once the keys are accepted again the next run delivers them without a second submit.
#[tokio::test(flavor = "multi_thread")]
async fn output_checks_refused_by_the_bucket_wait_for_the_keys_and_never_fail_a_billed_image() {
    checks_wait_out_a_bucket_answering(
        "403 Forbidden",
        "AccessDenied",
        &["refuses the daemon's keys", "access denied"],
        77,
    )
    .await;
}

/// A bucket answering 503 SlowDown to every try (S3 throttling a prefix, a replica down)
/// after Claid wrote the outputs: as for refused keys, the checks wait (`run --once` ends 69
/// at `api.unreachable_timeout`), nothing fails, the next run delivers without a second
/// submit. It failed the billed images after a few tries as `storage-unreachable`.
#[tokio::test(flavor = "multi_thread")]
async fn output_checks_wait_out_a_bucket_answering_503_and_never_fail_a_billed_image() {
    checks_wait_out_a_bucket_answering(
        "503 Service Unavailable",
        "SlowDown",
        &["does not answer", "503"],
        69,
    )
    .await;
}

/// The bucket's endpoint starts answering every request 200 with a web page (a proxy's or a
/// captive portal's page) after Claid wrote the outputs: what it serves is not the objects,
/// so the checks wait as for an outage (`run --once` ends 69 at `api.unreachable_timeout`),
/// nothing fails, and the next run delivers without a second submit. (The page was read as
/// the object three times, then the billed images failed `result-mismatch`, and a replay made
/// before the proxy was mended billed them again: acceptance run.)
#[tokio::test(flavor = "multi_thread")]
async fn output_checks_wait_out_an_endpoint_answering_web_pages_and_never_fail_a_billed_image() {
    checks_wait_out_a_bucket_answering(
        "200 OK",
        "",
        &["serves something other than its bucket"],
        69,
    )
    .await;
}

/// As above, with the page sent chunked (no `Content-Length`, which every S3 answer to a
/// `HEAD` has): the look at the object fails rather than reading a page, and is waited out
/// the same way. (It failed the billed images `storage-unreachable`.)
#[tokio::test(flavor = "multi_thread")]
async fn output_checks_wait_out_an_endpoint_answering_chunked_pages() {
    checks_wait_out_a_bucket_answering("200 OK", "chunked", &["Header missing"], 69).await;
}

/// The checks of two images written by Claid when the bucket's endpoint starts answering
/// `status` with S3's error document for `code` (with a web page when `code` is empty, sent
/// chunked when it is `chunked`).
async fn checks_wait_out_a_bucket_answering(
    status: &'static str,
    code: &'static str,
    told: &[&str],
    exit: i32,
) {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let scenario = Scenario::default()
        .latency(Latency::Fixed(std::time::Duration::from_secs(2)))
        .seed(7);
    let (env, switch, config) = switched_env(&s3, scenario, 2, "unreachable_timeout: 4s").await;
    env.drop_file(
        "shoes.yaml",
        b"output: { format: jpeg, destination: storage://catalog/out/ }\nimages:\n  - storage://catalog/in/sku-0.png\n  - storage://catalog/in/sku-1.png\n",
    );
    let (mut once, log_path) = spawn_run_once(&env, &config);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = std::time::Duration::from_secs(60);
    crate::support::wait_until("the images are submitted", deadline, || {
        env.stats().batch_images + env.stats().submits >= 2
    })
    .await;
    if code.is_empty() {
        switch.answer_page(status).await;
    } else if code == "chunked" {
        let body = "<!DOCTYPE html><html><body>Welcome</body></html>".to_owned();
        let chunked = "Transfer-Encoding: chunked\r\n";
        switch.answer_raw(status, "text/html", body, chunked).await;
    } else {
        switch.answer(status, code).await;
    }
    let status = tokio::time::timeout(deadline, once.wait())
        .await
        .expect("run --once ends")
        .expect("exit status");
    assert_eq!(status.code(), Some(exit), "{}", log());
    assert!(!log().contains("Job failed"), "nothing failed:\n{}", log());
    assert!(
        told.iter().all(|words| log().contains(words)),
        "the bucket's answer is told ({told:?}):\n{}",
        log()
    );
    switch.off().await;
    switch.on();
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    let report = env.report("shoes");
    let rows = report["jobs"].as_array().expect("rows");
    assert!(rows.iter().all(|r| r["status"] == "done"), "{report:#}");
    let stats = env.stats();
    assert_eq!(
        stats.batch_images + stats.submits,
        2,
        "each image billed once"
    );
    assert_eq!(stats.duplicate_submits, 0);
    s3.stop().await;
}

/// `on_output_exists: skip` and `fail` protect objects already in the bucket: Claid writes a
/// storage output itself, so the policy is applied before the submit (nothing is billed).
/// An image whose object is not there yet is edited as usual.
#[tokio::test]
async fn on_output_exists_skip_and_fail_protect_existing_objects_before_any_spend() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    for (policy, code, status) in [("skip", 0, "skipped"), ("fail", 2, "failed")] {
        let (env, config) = storage_env(&s3, quick(), "", 2).await;
        append_to(&config, &format!("on_output_exists: {policy}\n"));
        let kept = crate::support::png(9, 7);
        let prefix = format!("raw/{policy}/");
        s3.put_object("catalog", &format!("{prefix}shoes/sku-0.jpg"), &kept)
            .await;
        if policy == "skip" {
            // An empty object is no output to keep: Claid writes this one again.
            s3.put_object("catalog", &format!("{prefix}shoes/sku-1.jpg"), b"")
                .await;
        }
        env.drop_file(
            "shoes.yaml",
            format!(
                "output: {{ format: jpeg, destination: storage://catalog/{policy}/ }}\nimages:\n  - storage://catalog/in/sku-0.png\n  - storage://catalog/in/sku-1.png\n"
            )
            .as_bytes(),
        );
        let (exit, stderr) = env.run_once(&config).await;
        assert_eq!(exit, code, "{policy}: {stderr}");
        let report = env.report("shoes");
        assert_eq!(report["jobs"][0]["status"], status, "{policy}: {report:#}");
        assert_eq!(report["jobs"][1]["status"], "done", "{policy}: {report:#}");
        if policy == "fail" {
            assert!(
                report["jobs"][0]["reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("output-exists")),
                "{report:#}"
            );
        } else {
            // The kept object's size, read from its header, as a kept file's is reported.
            let row = &report["jobs"][0];
            assert_eq!(
                (row["width"].as_u64(), row["height"].as_u64()),
                (Some(9), Some(7)),
                "{row}"
            );
        }
        assert_eq!(
            s3.get_object("catalog", &format!("{prefix}shoes/sku-0.jpg"))
                .await
                .expect("object"),
            kept,
            "{policy}: the existing object is left as it was"
        );
        let made = s3
            .get_object("catalog", &format!("{prefix}shoes/sku-1.jpg"))
            .await
            .expect("object");
        assert!(
            !made.is_empty(),
            "{policy}: the image without an output is made"
        );
        let stats = env.stats();
        assert_eq!(
            stats.submits + stats.batch_images,
            1,
            "{policy}: only the image without an object is billed"
        );
    }
    s3.stop().await;
}

/// The look before the submit (whether the output object is there, which `skip` and `fail`
/// need, and which object `replace` replaces) waits for a bucket that does not answer, or
/// answers 503: nothing is submitted meanwhile, and once it answers, `skip` keeps the object
/// there, unbilled. (Told a warning, the image was submitted at once: billed, the object
/// `skip` was to keep replaced, and with `replace` nothing noted, so an earlier edit left at
/// the key could be recorded as the new one.) Single submits and a batch alike.
#[tokio::test(flavor = "multi_thread")]
async fn the_look_before_a_storage_outputs_submit_waits_for_the_bucket() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    for (policy, batch, fault) in [
        ("skip", "batch: { max_images: 1 }", None),
        ("replace", "", Some(("503 Service Unavailable", "SlowDown"))),
    ] {
        let (env, mut daemon, key, kept) =
            looking_before_the_submit(&s3, policy, batch, fault).await;
        let deadline = std::time::Duration::from_secs(60);
        crate::support::wait_until("the bucket told away", deadline, || {
            env.daemon_log(0).contains("does not answer")
        })
        .await;
        // Well past object_store's own quick retries (under a second).
        crate::support::wait_until("the looks retried", deadline, || {
            env.daemon_log(0)
                .matches("Cannot reach the bucket of an output object")
                .count()
                >= 4
                || env.stats().submits + env.stats().batch_images > 0
        })
        .await;
        assert_eq!(
            env.stats().submits + env.stats().batch_images,
            0,
            "{policy}: nothing submitted while the bucket cannot be looked at:\n{}",
            env.daemon_log(0)
        );
        env.switch.off().await;
        env.switch.on();
        crate::support::wait_until("the report", deadline, || {
            env.outbox.join("shoes.report.json").exists()
        })
        .await;
        let report = env.report("shoes");
        let first = if policy == "skip" { "skipped" } else { "done" };
        assert_eq!(report["jobs"][0]["status"], first, "{policy}: {report:#}");
        assert_eq!(report["jobs"][1]["status"], "done", "{policy}: {report:#}");
        let billed = env.stats().submits + env.stats().batch_images;
        if policy == "skip" {
            assert_eq!(
                s3.get_object("catalog", &key).await.expect("object"),
                kept,
                "the object `skip` keeps"
            );
            assert_eq!(billed, 1, "only the image without an object is billed");
        } else {
            assert_ne!(s3.get_object("catalog", &key).await.expect("object"), kept);
            assert_eq!(billed, 2);
            assert_eq!(env.stats().batch_submits, 1, "the two went in one batch");
        }
        crate::support::stop(&mut daemon).await;
    }
    s3.stop().await;
}

/// A bucket that answers the look before the submit with an error that is no outage (here
/// 400) fails the images, unbilled, naming the object and the fix: without its answer
/// `on_output_exists` cannot be kept.
#[tokio::test(flavor = "multi_thread")]
async fn a_look_before_the_submit_answered_otherwise_fails_the_images_unbilled() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let (env, mut daemon, key, kept) =
        looking_before_the_submit(&s3, "skip", "", Some(("400 Bad Request", "InvalidRequest")))
            .await;
    crate::support::wait_until("the report", std::time::Duration::from_secs(60), || {
        env.outbox.join("shoes.report.json").exists()
    })
    .await;
    let report = env.report("shoes");
    for row in report["jobs"].as_array().expect("rows") {
        let reason = row["reason"].as_str().unwrap_or_default();
        assert!(
            row["status"] == "failed"
                && reason.starts_with("storage-unreachable")
                && reason.contains("nothing was billed")
                && reason.contains("replay --failed"),
            "{report:#}"
        );
    }
    assert_eq!(env.stats().submits + env.stats().batch_images, 0);
    env.switch.off().await;
    env.switch.on();
    assert_eq!(s3.get_object("catalog", &key).await.expect("object"), kept);
    crate::support::stop(&mut daemon).await;
    s3.stop().await;
}

/// The look before the submit answered "not found" while the bucket's endpoint answers web
/// pages (a 404 page of a proxy, not S3's answer) is no answer about the object: the listing
/// that should confirm the bucket is answered the same way, so the look waits, as for an
/// outage, and is made again once the bucket answers. `skip` then keeps the object there:
/// nothing billed for it. (The look stood: `skip` had the object overwritten, without a
/// word; acceptance run.)
#[tokio::test(flavor = "multi_thread")]
async fn issue15_a_look_answered_by_web_pages_waits_and_skip_keeps_the_object() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let (env, mut daemon, key, kept) = looking_before_the_submit(&s3, "skip", "", None).await;
    env.switch.answer_page("404 Not Found").await;
    let deadline = std::time::Duration::from_secs(60);
    crate::support::wait_until("the pages warned of", deadline, || {
        env.daemon_log(0)
            .contains("answers a listing as no S3 bucket does")
    })
    .await;
    let listings = |switch: &Switch| {
        switch
            .answered
            .lock()
            .expect("lock")
            .iter()
            .filter(|head| head.starts_with("GET ") && head.contains("list-type=2"))
            .count()
    };
    // Listed again while it answers pages; nothing is sent meanwhile.
    crate::support::wait_until("a second listing", deadline, || listings(&env.switch) >= 2).await;
    assert_eq!(env.stats().submits + env.stats().batch_images, 0);
    env.switch.off().await;
    env.switch.on();
    crate::support::wait_until("the report", deadline, || {
        env.outbox.join("shoes.report.json").exists()
    })
    .await;
    let report = env.report("shoes");
    assert_eq!(report["jobs"][0]["status"], "skipped", "{report:#}");
    assert_eq!(report["jobs"][1]["status"], "done", "{report:#}");
    assert_eq!(s3.get_object("catalog", &key).await.expect("object"), kept);
    assert_eq!(
        env.stats().submits + env.stats().batch_images,
        1,
        "sku-1 only"
    );
    crate::support::stop(&mut daemon).await;
    s3.stop().await;
}

/// The look before the submit answered 200 with a web page for every key (a proxy's or a
/// captive portal's page) is no answer about the objects: the endpoint says a key no one
/// wrote is there, so the look waits, as for an outage, and is made again once the bucket
/// answers. `skip` then keeps the object there, `fail` refuses it, and the image with nothing
/// at its key is edited. (The page was taken for an object: `skip` had the kept object
/// overwritten, as "no image", and `fail` failed the image with nothing there.) The look at
/// a storage input (made under every policy; the only one under `replace`) waits too: the
/// page failed every input `input-unreadable`.
#[tokio::test(flavor = "multi_thread")]
async fn issue15_a_look_answered_200_by_web_pages_waits_for_the_bucket() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    for (policy, first) in [("skip", "skipped"), ("fail", "failed"), ("replace", "done")] {
        let (env, mut daemon, key, kept) = looking_before_the_submit(&s3, policy, "", None).await;
        env.switch.answer_page("200 OK").await;
        let deadline = std::time::Duration::from_secs(60);
        crate::support::wait_until("the page warned of", deadline, || {
            env.daemon_log(0)
                .contains("serves something other than its bucket")
        })
        .await;
        let probes = |switch: &Switch| {
            switch
                .answered
                .lock()
                .expect("lock")
                .iter()
                .filter(|head| head.contains(".claid-hotfolder-probe-"))
                .count()
        };
        // Asked again while it answers pages; nothing is sent meanwhile.
        crate::support::wait_until("a second probe", deadline, || probes(&env.switch) >= 2).await;
        assert_eq!(
            env.stats().submits + env.stats().batch_images,
            0,
            "{policy}"
        );
        env.switch.off().await;
        env.switch.on();
        crate::support::wait_until("the report", deadline, || {
            env.outbox.join("shoes.report.json").exists()
        })
        .await;
        let report = env.report("shoes");
        assert_eq!(report["jobs"][0]["status"], first, "{policy}: {report:#}");
        if policy == "fail" {
            let reason = report["jobs"][0]["reason"].as_str().unwrap_or_default();
            assert!(reason.starts_with("output-exists"), "{report:#}");
        }
        assert_eq!(report["jobs"][1]["status"], "done", "{policy}: {report:#}");
        let object = s3.get_object("catalog", &key).await.expect("object");
        // `replace` looks at no object before the submit, but at each storage input, which
        // the pages failed `input-unreadable`: both images are edited once.
        let (is_kept, billed) = if policy == "replace" {
            (false, 2)
        } else {
            (true, 1)
        };
        assert_eq!(object == kept, is_kept, "{policy}");
        assert_eq!(
            env.stats().submits + env.stats().batch_images,
            billed,
            "{policy}: each image edited at most once"
        );
        crate::support::stop(&mut daemon).await;
    }
    s3.stop().await;
}

/// A look made after a listing had found the bucket missing, and answered "not found" by
/// it, is made again once the bucket is back, although another look's listing found it
/// back after the look began: `skip` keeps the object there. (That later listing let the
/// look stand: the image was submitted, billed, and the object `skip` should keep
/// overwritten; acceptance run.)
#[tokio::test(flavor = "multi_thread")]
async fn issue15_a_look_made_while_the_bucket_was_missing_is_made_again_once_it_is_back() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    // Images one by one, each with its own look (a batch's looks are made one batch at a
    // time).
    let (env, switch, config) = switched_env(&s3, quick(), 2, "batch: { max_images: 1 }").await;
    append_to(&config, "on_output_exists: skip\n");
    let kept = crate::support::png(9, 7);
    let key = "raw/back/shoes/sku-0.jpg";
    s3.put_object("catalog", key, &kept).await;
    let mut daemon = env.spawn_daemon(&config, 0);
    let deadline = std::time::Duration::from_secs(60);
    crate::support::wait_until("ready", deadline, || env.daemon_log(0).contains("Ready")).await;
    switch.answer("404 Not Found", "NoSuchBucket").await;
    // A first drop's look finds the bucket missing.
    env.drop_file(
        "first.yaml",
        b"output: { format: jpeg, destination: storage://catalog/first/ }\nimages:\n  - storage://catalog/in/sku-1.png\n",
    );
    crate::support::wait_until("the missing bucket told", deadline, || {
        env.daemon_log(0).contains("does not exist (NoSuchBucket)")
    })
    .await;
    // Then the second drop's look at an object that is there, answered by the missing bucket.
    env.drop_file(
        "shoes.yaml",
        b"output: { format: jpeg, destination: storage://catalog/back/ }\nimages:\n  - storage://catalog/in/sku-0.png\n",
    );
    crate::support::wait_until("the look at the kept object", deadline, || {
        switch
            .answered
            .lock()
            .expect("lock")
            .iter()
            .any(|head| head.starts_with("HEAD ") && head.contains("back/shoes/sku-0"))
    })
    .await;
    // Back before the first drop's next listing (five seconds after its last).
    switch.off().await;
    switch.on();
    crate::support::wait_until("both reports", deadline, || {
        env.outbox.join("shoes.report.json").exists()
            && env.outbox.join("first.report.json").exists()
    })
    .await;
    let report = env.report("shoes");
    assert_eq!(report["jobs"][0]["status"], "skipped", "{report:#}");
    assert_eq!(s3.get_object("catalog", key).await.expect("object"), kept);
    assert_eq!(env.report("first")["jobs"][0]["status"], "done");
    assert_eq!(
        env.stats().submits + env.stats().batch_images,
        1,
        "the first drop's only"
    );
    crate::support::stop(&mut daemon).await;
    s3.stop().await;
}

/// A daemon whose bucket goes through a switch, ready, with `on_output_exists: policy` and
/// `batch` (keys under `api:`); an object already at the first image's output key (its key
/// and bytes are returned); then the switch is set to `fault` (off when `None`) and a
/// manifest of two images with storage outputs is dropped.
async fn looking_before_the_submit(
    s3: &S3Server,
    policy: &str,
    batch: &str,
    fault: Option<(&'static str, &'static str)>,
) -> (SwitchedEnv, tokio::process::Child, String, Vec<u8>) {
    let (env, switch, config) = switched_env(s3, quick(), 2, batch).await;
    append_to(&config, &format!("on_output_exists: {policy}\n"));
    let kept = crate::support::png(9, 7);
    let key = format!("raw/away-{policy}/shoes/sku-0.jpg");
    s3.put_object("catalog", &key, &kept).await;
    // Each look that fails is logged at debug.
    let daemon = env.spawn_daemon_with(
        &config,
        0,
        &[("RUST_LOG", "info,claid_hotfolder::pipeline::job=debug")],
    );
    let deadline = std::time::Duration::from_secs(60);
    crate::support::wait_until("ready", deadline, || env.daemon_log(0).contains("Ready")).await;
    match fault {
        Some((status, code)) => switch.answer(status, code).await,
        None => switch.off().await,
    }
    env.drop_file(
        "shoes.yaml",
        format!(
            "output: {{ format: jpeg, destination: storage://catalog/away-{policy}/ }}\nimages:\n  - storage://catalog/in/sku-0.png\n  - storage://catalog/in/sku-1.png\n"
        )
        .as_bytes(),
    );
    (SwitchedEnv { env, switch }, daemon, key, kept)
}

/// A test environment whose daemon reaches its bucket through `switch`.
struct SwitchedEnv {
    env: TestEnv,
    switch: Switch,
}

impl std::ops::Deref for SwitchedEnv {
    type Target = TestEnv;
    fn deref(&self) -> &TestEnv {
        &self.env
    }
}

/// A job whose submit answer was lost (held in doubt) while Claid wrote its output: the object
/// at its key after `replay --in-doubt` is that submit's result (under `fail` or `skip`
/// nothing was there when it was sent; under `replace` it is none of the objects noted
/// then), taken and checked without a second submit: done, with its local copy. (`fail`
/// failed it as `output-exists`, at every replay; `skip` reported it kept, without the copy;
/// `replace` sent it again and Claid billed it twice.)
#[tokio::test(flavor = "multi_thread")]
async fn an_object_written_for_a_lost_submit_is_taken_as_its_result_under_every_policy() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    for policy in ["fail", "skip", "replace"] {
        let (env, _) = storage_env(&s3, quick().drop_share(1.0), "", 2).await;
        let keys = credentials_file(env.dir.path());
        let mut storages = storages_yaml("catalog-s3", "s3://catalog/raw", &s3.endpoint, &keys);
        storages.push_str("    output_local_copy: true\n");
        let config = env.config("batch: { max_images: 1 }", &storages);
        append_to(
            &config,
            &format!("on_output_exists: {policy}\nin_doubt: hold\n"),
        );
        env.drop_file(
            "shoes.yaml",
            format!("output: {{ format: jpeg, destination: storage://catalog/{policy}/ }}\nimages:\n  - storage://catalog/in/sku-0.png\n  - storage://catalog/in/sku-1.png\n").as_bytes(),
        );
        let (_, stderr) = env.run_once(&config).await;
        let report = env.report("shoes");
        for row in report["jobs"].as_array().expect("rows") {
            assert_eq!(row["status"], "in-doubt", "{policy}: {row}\n{stderr}");
        }
        let written = |keys: &Vec<String>| keys.len() == 2;
        let mut keys = Vec::new();
        for _ in 0..500 {
            keys = s3.list_keys("catalog", &format!("raw/{policy}/")).await;
            if written(&keys) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(
            written(&keys),
            "{policy}: Claid wrote both objects: {keys:?}"
        );
        let cfg = config.to_str().expect("utf-8");
        let (code, out, err) = cli(&["replay", "--in-doubt", "--config", cfg]).await;
        assert_eq!(code, 0, "{out}{err}");
        let (code, stderr) = env.run_once(&config).await;
        assert_eq!(code, 0, "{policy}: {stderr}");
        let report = env.report("shoes");
        for (i, row) in report["jobs"].as_array().expect("rows").iter().enumerate() {
            assert_eq!(row["status"], "done", "{policy}: {row}");
            assert_eq!(row["width"], 40 + i as u64, "{policy}: {row}");
            assert_eq!(
                crate::support::dimensions(&env.outbox.join(format!("shoes/sku-{i}.jpg"))),
                (40 + i as u32, 30),
                "{policy}: the local copy of Claid's object"
            );
        }
        assert_eq!(env.stats().submits, 2, "{policy}: not submitted again");
    }
    s3.stop().await;
}

/// `on_output_exists: skip` keeps only an image at an output's key: an object there that
/// starts as no image format does (a text file here) is no output to keep, and Claid writes
/// the edit there, as over an empty one. (It was kept and reported `skipped`, 0×0;
/// acceptance run.)
#[tokio::test]
async fn skip_does_not_keep_an_object_that_is_no_image() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let (env, config) = storage_env(&s3, quick(), "", 2).await;
    append_to(&config, "on_output_exists: skip\n");
    let keys = ["raw/noimg/shoes/sku-0.jpg", "raw/noimg/shoes/sku-1.jpg"];
    s3.put_object("catalog", keys[0], b"EXISTING\n").await;
    // A JPEG's first bytes and nothing an image has after them: read whole, no size.
    s3.put_object("catalog", keys[1], b"\xFF\xD8\xFF\xE0garbage-after-magic")
        .await;
    env.drop_file(
        "shoes.yaml",
        b"output: { format: jpeg, destination: storage://catalog/noimg/ }\nimages:\n  - storage://catalog/in/sku-0.png\n  - storage://catalog/in/sku-1.png\n",
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    let report = env.report("shoes");
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(report["jobs"][i]["status"], "done", "{report:#}");
        let made = s3.get_object("catalog", key).await.expect("object");
        assert!(
            image::ImageReader::new(std::io::Cursor::new(&made))
                .with_guessed_format()
                .expect("read")
                .into_dimensions()
                .is_ok(),
            "Claid's image is at {key}"
        );
    }
    assert_eq!(stderr.matches("is no image").count(), 2, "{stderr}");
    assert_eq!(env.stats().submits + env.stats().batch_images, 2);
    s3.stop().await;
}

/// `on_output_exists: skip` keeps an object already at an output's key; the same manifest
/// dropped again looks at the key again, and an object deleted since is made then. (The
/// re-drop did nothing, "unchanged and already finished", though `plan` said the image would
/// be made; acceptance run.)
#[tokio::test]
async fn issue15_a_kept_object_deleted_since_is_made_when_its_manifest_is_dropped_again() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let (env, config) = storage_env(&s3, quick(), "", 1).await;
    append_to(&config, "on_output_exists: skip\n");
    let key = "raw/kept/shoes/sku-0.jpg";
    let theirs = crate::support::png(20, 10);
    s3.put_object("catalog", key, &theirs).await;
    let text = b"output: { format: jpeg, destination: storage://catalog/kept/ }\nimages:\n  - storage://catalog/in/sku-0.png\n";
    env.drop_file("shoes.yaml", text);
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(env.report("shoes")["jobs"][0]["status"], "skipped");
    assert_eq!(env.stats().submits + env.stats().batch_images, 0);
    s3.delete_object("catalog", key).await;
    env.drop_file("shoes.yaml", text);
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(env.report("shoes")["jobs"][0]["status"], "done", "{stderr}");
    let made = s3.get_object("catalog", key).await.expect("made");
    assert_ne!(made, theirs);
    assert_eq!(env.stats().submits + env.stats().batch_images, 1);
    s3.stop().await;
}

/// With `output_local_copy`, a file already at the local copy's place is an output that exists:
/// `on_output_exists: fail` refuses it and `skip` keeps it before the submit, nothing billed and
/// the file kept (`fail` found it only at the copy, after Claid had written and billed the
/// object).
#[tokio::test]
async fn on_output_exists_fail_sees_a_file_at_the_local_copys_place_before_any_spend() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    // `skip` keeps it the same way, unbilled (it was submitted, billed, and the old file
    // kept and reported `skipped` beside Claid's new object).
    for (policy, exit_code, status) in [("fail", 2, "failed"), ("skip", 0, "skipped")] {
        let (env, config) = storage_env(&s3, quick(), "output_local_copy: true", 1).await;
        append_to(&config, &format!("on_output_exists: {policy}\n"));
        let copy = env.outbox.join("shoes/sku-0.jpg");
        std::fs::create_dir_all(copy.parent().unwrap()).expect("folder");
        std::fs::write(&copy, b"someone's file").expect("file");
        env.drop_file(
            "shoes.yaml",
            format!("output: {{ format: jpeg, destination: storage://catalog/out-{policy}/ }}\nimages:\n  - storage://catalog/in/sku-0.png\n").as_bytes(),
        );
        let (exit, stderr) = env.run_once(&config).await;
        assert_eq!(exit, exit_code, "{policy}: {stderr}");
        let report = env.report("shoes");
        assert_eq!(report["jobs"][0]["status"], status, "{policy}: {report:#}");
        // No object was written: none is listed (the kept file's row named one).
        assert!(
            report["jobs"][0]["object"].is_null(),
            "{policy}: {report:#}"
        );
        if policy == "fail" {
            assert!(
                report["jobs"][0]["reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("output-exists")),
                "{report:#}"
            );
        }
        let stats = env.stats();
        assert_eq!(
            stats.submits + stats.batch_images,
            0,
            "{policy}: nothing billed"
        );
        assert_eq!(std::fs::read(&copy).expect("kept"), b"someone's file");
        assert!(
            s3.get_object("catalog", &format!("raw/out-{policy}/shoes/sku-0.jpg"))
                .await
                .is_none(),
            "{policy}"
        );
    }
    s3.stop().await;
}

/// A run reported with jobs held in doubt deletes the staged copies of its finished local
/// files at once (held, the run does not end until a replay, and the user's files stayed in
/// the bucket); the held jobs' own are not staged copies here (storage inputs).
#[tokio::test(flavor = "multi_thread")]
async fn a_run_held_in_doubt_deletes_the_staged_copies_of_its_finished_files() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let (env, _) = storage_env(&s3, quick().batch_rename_share(1.0), "", 2).await;
    let keys = credentials_file(env.dir.path());
    let storages = storages_yaml("catalog-s3", "s3://catalog/raw", &s3.endpoint, &keys);
    let config = env.config("staging: catalog", &storages);
    // The storage inputs first: they make the canary batch, whose renamed results match no
    // job (held in doubt, batching off); the local files then go alone, staged.
    let mut manifest = String::from("output: { format: jpeg }\nimages:\n");
    for i in 0..2 {
        manifest.push_str(&format!("  - storage://catalog/in/sku-{i}.png\n"));
    }
    for i in 0..2 {
        env.drop_file(
            &format!("shoes/img-{i}.png"),
            &crate::support::png(50 + i, 30),
        );
        manifest.push_str(&format!(
            "  - {{ input: shoes/img-{i}.png, output: local-{i}.jpg }}\n"
        ));
    }
    env.drop_file("shoes.yaml", manifest.as_bytes());
    let (exit, stderr) = env.run_once(&config).await;
    assert_eq!(exit, 2, "{stderr}");
    let report = env.report("shoes");
    let statuses: Vec<_> = report["jobs"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| row["status"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        statuses,
        ["in-doubt", "in-doubt", "done", "done"],
        "{report:#}"
    );
    assert!(
        env.stats().storage_reads >= 2,
        "the local files were read by Claid from their staged copies"
    );
    let left = s3.list_keys("catalog", "raw/staging/").await;
    assert!(left.is_empty(), "{left:?}");
    s3.stop().await;
}

/// `run --once` (its child and log) of four local files staged into `s3` (`api.staging`), in
/// batches whose tasks take 3 s at Claid.
async fn four_staged_in_a_run_once(s3: &S3Server) -> (TestEnv, tokio::process::Child, PathBuf) {
    let scenario = Scenario::default()
        .latency(Latency::Fixed(std::time::Duration::from_secs(3)))
        .seed(7);
    let (env, _) = storage_env(s3, scenario, "", 0).await;
    let keys = credentials_file(env.dir.path());
    let storages = storages_yaml("catalog-s3", "s3://catalog/raw", &s3.endpoint, &keys);
    let config = env.config("staging: catalog", &storages);
    drop_local_manifest(&env, 4, false);
    let (once, log_path) = spawn_run_once(&env, &config);
    (env, once, log_path)
}

/// Deletes every staged object there is now.
async fn delete_staged(s3: &S3Server) {
    for key in s3.list_keys("catalog", "raw/staging/").await {
        s3.delete_object("catalog", &key).await;
    }
}

/// Staged inputs deleted from the bucket before their jobs were submitted (a lifecycle rule,
/// the cleanup of another daemon sharing the staging prefix): each is staged again before its
/// submit instead of Claid failing it with "object not found"; every image is delivered.
#[tokio::test(flavor = "multi_thread")]
async fn a_staged_input_deleted_before_its_submit_is_staged_again() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let (env, mut once, log_path) = four_staged_in_a_run_once(&s3).await;
    let deadline = std::time::Duration::from_secs(60);
    // Every input staged, the canary batch (2 images) read by Claid: the other two wait for
    // the canary's end (3 s), and their staged objects are deleted meanwhile.
    crate::support::wait_until_async("staged and the canary read", deadline, || async {
        s3.list_keys("catalog", "raw/staging/").await.len() == 4 && env.stats().storage_reads >= 2
    })
    .await;
    delete_staged(&s3).await;
    let status = tokio::time::timeout(deadline, once.wait())
        .await
        .expect("run --once ends")
        .expect("exit status");
    let stderr = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("it is staged again"), "{stderr}");
    check_staged_run(&env, 4, 0);
    assert_eq!(env.stats().storage_errors, 0, "Claid found every input");
    s3.stop().await;
}

/// Staged inputs that something keeps deleting (a lifecycle rule, a cleanup script): each job
/// stages its input again a few times, then fails as `staging-failed`, naming the cause and the
/// fix, unbilled, and `run --once` ends. (It staged and warned without end: 4,109 uploads in
/// two minutes, and the run never ended while the deleting went on.)
#[tokio::test(flavor = "multi_thread")]
async fn staged_inputs_deleted_again_and_again_fail_the_jobs_instead_of_staging_without_end() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let (env, mut once, log_path) = four_staged_in_a_run_once(&s3).await;
    let deadline = std::time::Duration::from_secs(90);
    // The canary (2 images) read by Claid: the other two wait for its end (3 s), and from
    // then on every staged object is deleted as soon as it is seen, until the run ends.
    crate::support::wait_until_async("the canary read", deadline, || async {
        env.stats().storage_reads >= 2
    })
    .await;
    let status = tokio::time::timeout(deadline, async {
        loop {
            delete_staged(&s3).await;
            if let Some(status) = once.try_wait().expect("wait") {
                return status;
            }
        }
    })
    .await
    .expect("run --once ends while the deleting goes on");
    let stderr = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.matches("it is staged again").count() <= 2 * 3,
        "each of the two stages again at most three times:\n{stderr}"
    );
    let report = env.report("shoes");
    let gave_up = report["jobs"]
        .as_array()
        .expect("rows")
        .iter()
        .filter(|row| {
            row["reason"].as_str().is_some_and(|r| {
                r.starts_with("staging-failed")
                    && r.contains("was deleted from the bucket 3 times")
                    && r.contains("nothing was billed")
            })
        })
        .count();
    assert!(gave_up >= 1, "{report:#}");
    s3.stop().await;
}

/// Staged inputs deleted while their batch's submit is being retried (the API answering 503):
/// each retry looks at them again and stages the missing ones again, as the first submit
/// does; the retried submit was sent unchecked and Claid failed every image ("object not
/// found"), billed, for a replay to bill again.
#[tokio::test(flavor = "multi_thread")]
async fn a_staged_input_deleted_while_its_batch_submit_is_retried_is_staged_again() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let (env, _) = storage_env(&s3, Scenario::default().seed(7), "", 0).await;
    let keys = credentials_file(env.dir.path());
    let storages = storages_yaml("catalog-s3", "s3://catalog/raw", &s3.endpoint, &keys);
    let config = env.config("staging: catalog", &storages);
    let deadline = std::time::Duration::from_secs(60);
    // A daemon: the start checks the storages with the API up; then the API goes down, and
    // the drop's batch submit is refused (503) and retried.
    let mut daemon = env.spawn_daemon(&config, 0);
    crate::support::wait_until("the storages are checked", deadline, || {
        env.daemon_log(0).contains("Checked the storages")
    })
    .await;
    env.emulator.control().set_down(true);
    let before = env.stats().requests;
    drop_local_manifest(&env, 2, false);
    crate::support::wait_until_async("staged, and the batch submit refused", deadline, || async {
        s3.list_keys("catalog", "raw/staging/").await.len() == 2 && env.stats().requests > before
    })
    .await;
    delete_staged(&s3).await;
    // Two more calls while the API is still down: a retry whose look at the staged inputs
    // came just before the deletion is answered 503 too, so the retry that reaches Claid
    // looked after it (the API brought back at once raced that retry on a loaded machine).
    let after_delete = env.stats().requests;
    crate::support::wait_until("two more calls while the API is down", deadline, || {
        env.stats().requests >= after_delete + 2
    })
    .await;
    env.emulator.control().set_down(false);
    crate::support::wait_until("the drop's report", deadline, || {
        env.outbox.join("shoes.report.json").is_file()
    })
    .await;
    crate::support::stop(&mut daemon).await;
    let log = env.daemon_log(0);
    assert!(log.contains("it is staged again"), "{log}");
    check_staged_run(&env, 2, 0);
    assert_eq!(env.stats().storage_errors, 0, "Claid found every input");
    s3.stop().await;
}

/// `api.staging` taken out of the config (a restart after a kill) while a run had staged
/// objects: the run ends with its cleanup marked and a WARN, and once staging is set again
/// the next start deletes them. They were forgotten in the bucket for good, without a word.
#[tokio::test(flavor = "multi_thread")]
async fn staged_objects_of_a_run_ended_without_staging_set_are_deleted_once_it_is_set_again() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let scenario = Scenario::default()
        .latency(Latency::Fixed(std::time::Duration::from_secs(2)))
        .seed(7);
    let (env, _) = storage_env(&s3, scenario, "", 0).await;
    let keys = credentials_file(env.dir.path());
    let storages = storages_yaml("catalog-s3", "s3://catalog/raw", &s3.endpoint, &keys);
    let config = env.config("staging: catalog", &storages);
    drop_local_manifest(&env, 2, false);
    let (mut once, log_path) = spawn_run_once(&env, &config);
    let deadline = std::time::Duration::from_secs(60);
    crate::support::wait_until("staged and submitted", deadline, || {
        std::fs::read_to_string(&log_path).is_ok_and(|log| log.contains("Batch submitted"))
    })
    .await;
    once.start_kill().expect("kill -9");
    let _ = once.wait().await;
    let staged = || async { s3.list_keys("catalog", "raw/staging/").await.len() };
    assert_eq!(staged().await, 2);
    let without = env.config("", &storages);
    let (code, stderr) = env.run_once(&without).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("`api.staging` is no longer set"),
        "{stderr}"
    );
    assert_eq!(staged().await, 2, "kept while staging is not set");
    // Set again (the config file is written again: `env.config` has one path).
    let config = env.config("staging: catalog", &storages);
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        staged().await,
        0,
        "deleted once staging is set again:\n{stderr}"
    );
    check_staged_run(&env, 2, 0);
    s3.stop().await;
}

/// `api.staging` changed to another storage (a restart after a kill) while a run had staged
/// objects: the run ends with its cleanup marked and one WARN for them, and once staging names
/// their storage again the next start deletes them. (Each object got a WARN of its own, the
/// mark was cleared and the objects left for good; acceptance run.)
#[tokio::test(flavor = "multi_thread")]
async fn staged_objects_of_a_run_ended_with_staging_on_another_storage_are_deleted_once_it_is_back()
{
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let scenario = Scenario::default()
        .latency(Latency::Fixed(std::time::Duration::from_secs(2)))
        .storage(s3.connector("other-s3", "catalog", "other"))
        .seed(7);
    let (env, _) = storage_env(&s3, scenario, "", 0).await;
    let keys = credentials_file(env.dir.path());
    let storages = storages_yaml("catalog-s3", "s3://catalog/raw", &s3.endpoint, &keys)
        + &format!(
            "  other:\n    claid_name: other-s3\n    url: s3://catalog/other\n    endpoint: {}\n    credentials_file: {}\n",
            s3.endpoint,
            keys.display()
        );
    let config = env.config("staging: catalog", &storages);
    drop_local_manifest(&env, 2, false);
    let (mut once, log_path) = spawn_run_once(&env, &config);
    crate::support::wait_until(
        "staged and submitted",
        std::time::Duration::from_secs(60),
        || std::fs::read_to_string(&log_path).is_ok_and(|log| log.contains("Batch submitted")),
    )
    .await;
    once.start_kill().expect("kill -9");
    let _ = once.wait().await;
    let staged = || async { s3.list_keys("catalog", "raw/staging/").await.len() };
    assert_eq!(staged().await, 2);
    let elsewhere = env.config("staging: other", &storages);
    let (code, stderr) = env.run_once(&elsewhere).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stderr
            .matches("lie in another storage than `api.staging` names now")
            .count(),
        1,
        "{stderr}"
    );
    assert!(!stderr.contains("could not be deleted"), "{stderr}");
    assert_eq!(
        staged().await,
        2,
        "kept while staging names another storage"
    );
    let config = env.config("staging: catalog", &storages);
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(staged().await, 0, "deleted once staging is back:\n{stderr}");
    check_staged_run(&env, 2, 0);
    s3.stop().await;
}

/// Local files staged for outputs Claid writes into the bucket go in batches too: each is
/// staged under its output's name (`staging/<sha256>/sku-N.png`), since a batch names its
/// outputs after its inputs (staged under the content hash alone, every one went alone).
#[tokio::test]
async fn staged_inputs_with_a_storage_destination_go_in_batches() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let (env, _) = storage_env(&s3, quick(), "", 0).await;
    let keys = credentials_file(env.dir.path());
    let storages = storages_yaml("catalog-s3", "s3://catalog/raw", &s3.endpoint, &keys);
    let config = env.config("staging: catalog\nstaging_delete: false", &storages);
    drop_local_manifest(&env, 4, false);
    let mut manifest =
        String::from("output: { format: jpeg, destination: storage://catalog/out/ }\nimages:\n");
    for i in 0..4 {
        manifest.push_str(&format!(
            "  - {{ input: shoes/img-{i}.png, output: sku-{i}.jpg }}\n"
        ));
    }
    env.drop_file("shoes.yaml", manifest.as_bytes());
    // `plan` counts them as the daemon sends them: in batches, none alone.
    let (code, out, err) = crate::support::cli(&[
        "plan",
        env.inbox.join("shoes.yaml").to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("batch submits") && !out.contains("single submits"),
        "{out}"
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    let report = env.report("shoes");
    let rows = report["jobs"].as_array().expect("rows");
    assert!(rows.iter().all(|r| r["status"] == "done"), "{report:#}");
    let stats = env.stats();
    assert_eq!(stats.submits, 0, "none went alone");
    assert_eq!(stats.batch_images, 4);
    assert_eq!(
        s3.list_keys("catalog", "raw/out/shoes/").await,
        (0..4)
            .map(|i| format!("raw/out/shoes/sku-{i}.jpg"))
            .collect::<Vec<_>>()
    );
    let staged = s3.list_keys("catalog", "raw/staging/").await;
    assert!(
        staged
            .iter()
            .all(|k| k.contains("/sku-") && k.ends_with(".png")),
        "{staged:?}"
    );
    s3.stop().await;
}

/// A `gs://` storage (Google Cloud Storage): the daemon reaches the bucket through Google's
/// API with a service account's JSON key, and the embedded emulator serves it as a `gcs`
/// connector. The key's `gcs_base_url` points the client at a local stand-in for GCS's XML
/// API (moto, whose S3 API it is, behind [`crate::support::gcs_xml_api`]); everything else
/// is the path a real key takes: its RSA private key (a test key, `tests/fixtures/gcs/`)
/// signs each request's bearer token, a JWT naming the service account (no token service is
/// called: the client signs its own token).
#[tokio::test]
async fn a_gs_storage_is_read_and_written_through_a_service_account_key() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    s3.create_bucket("gcatalog").await;
    s3.put_object("gcatalog", "raw/in/sku-0.png", &crate::support::png(40, 30))
        .await;
    let gcs = crate::support::gcs_xml_api(&s3).await;
    let env = TestEnv::new(quick()).await;
    let key = env.dir.path().join("sa-key.json");
    let private_key = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gcs/test-service-account.pem"),
    )
    .expect("the test key");
    let key_line = private_key
        .lines()
        .nth(1)
        .expect("a line of the key")
        .to_owned();
    std::fs::write(
        &key,
        serde_json::json!({
            "type": "service_account",
            "client_email": "hotfolder@project.iam.gserviceaccount.com",
            "private_key_id": "k1",
            "private_key": private_key,
            "gcs_base_url": gcs.url,
        })
        .to_string(),
    )
    .expect("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("mode");
    let folders = format!(
        "folders:\n  inbox: {}\n  outbox: {}\n  archive: {}\n  rejected: {}\n  state: {}\nwatch: {{ settle: 100ms, rescan: 500ms }}\nadmin:\n  socket: {}\n",
        env.inbox.display(),
        env.outbox.display(),
        env.archive.display(),
        env.rejected.display(),
        env.state.display(),
        env.socket().display(),
    );
    let storage = format!(
        "storages:\n  catalog:\n    claid_name: catalog-gcs\n    url: gs://gcatalog/raw\n    credentials_file: {}\n",
        key.display()
    );
    // An S3 endpoint beside a gs:// URL would be unused: refused, naming the key.
    let wrong = env.dir.path().join("wrong.yaml");
    std::fs::write(
        &wrong,
        format!(
            "api:\n  base_url: embedded\n{folders}{storage}    endpoint: {}\n",
            s3.endpoint
        ),
    )
    .expect("config");
    let (code, out, err) = cli(&["validate", wrong.to_str().unwrap()]).await;
    assert_eq!(code, 65, "{out}{err}");
    assert!(
        out.contains("storages.catalog.endpoint") && out.contains("s3:// storages only"),
        "{out}"
    );

    let config = env.dir.path().join("gcs.yaml");
    std::fs::write(
        &config,
        format!("api:\n  base_url: embedded\n{folders}{storage}"),
    )
    .expect("config");
    let (code, out, err) = cli(&["validate", config.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}{err}");
    env.drop_file(
        "shoes.yaml",
        b"output: { destination: storage://catalog/out/ }\nimages:\n  - storage://catalog/in/sku-0.png\n",
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        s3.list_keys("gcatalog", "raw/out/").await,
        ["raw/out/shoes/sku-0.jpg"]
    );
    let report = env.report("shoes");
    let row = &report["jobs"][0];
    assert_eq!(row["status"], "done", "{row}");
    assert_eq!(
        row["object"], "storage://catalog-gcs/out/shoes/sku-0.jpg",
        "{row}"
    );
    assert!(!stderr.contains(&key_line), "{stderr}");
    // Every request to the bucket carried a JWT the key signed, for the service account.
    let authorizations = gcs.authorizations.lock().expect("authorizations").clone();
    assert!(!authorizations.is_empty());
    for authorization in &authorizations {
        let jwt = authorization
            .strip_prefix("Bearer ")
            .unwrap_or_else(|| panic!("not a bearer token: {authorization}"));
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3, "{jwt}");
        let decode = |part: &str| {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .expect("base64url")
        };
        let header: serde_json::Value = serde_json::from_slice(&decode(parts[0])).expect("json");
        let claims: serde_json::Value = serde_json::from_slice(&decode(parts[1])).expect("json");
        assert_eq!(header["alg"], "RS256", "{header}");
        assert_eq!(header["kid"], "k1", "{header}");
        assert_eq!(
            claims["iss"], "hotfolder@project.iam.gserviceaccount.com",
            "{claims}"
        );
        assert!(
            claims["scope"]
                .as_str()
                .is_some_and(|s| s.starts_with("https://www.googleapis.com/auth/")),
            "{claims}"
        );
        assert_eq!(decode(parts[2]).len(), 256, "a 2048-bit RSA signature");
    }

    // A key file that is not a service account's key is told, never quoted.
    std::fs::write(
        &key,
        b"{\"type\": \"authorized_user\", \"refresh_token\": \"TOP-SECRET\"}",
    )
    .expect("key");
    let (code, out, err) = cli(&["validate", config.to_str().unwrap()]).await;
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        out.contains("service_account") || err.contains("service_account"),
        "{out}{err}"
    );
    assert!(
        !out.contains("TOP-SECRET") && !err.contains("TOP-SECRET"),
        "{out}{err}"
    );
    s3.stop().await;
}

/// Storage inputs are looked at in the bucket before they are sent, as local files are at
/// intake: one that is not there, is empty, or is not an image fails `input-unreadable`
/// without reaching Claid (nothing billed), naming the object and the fix; the good ones of
/// the same batch are made.
#[tokio::test]
async fn issue15_storage_inputs_missing_empty_or_not_images_fail_before_any_spend() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let (env, config) = storage_env(&s3, quick(), "", 2).await;
    s3.put_object("catalog", "raw/in/empty.png", b"").await;
    s3.put_object(
        "catalog",
        "raw/in/notes.png",
        b"shopping list: shoes, socks\n",
    )
    .await;
    env.drop_file(
        "shoes.yaml",
        b"output: { format: png }\nimages:\n  - storage://catalog/in/sku-0.png\n  - storage://catalog/in/gone.png\n  - storage://catalog/in/empty.png\n  - storage://catalog/in/notes.png\n  - storage://catalog/in/sku-1.png\n",
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 2, "{stderr}");
    let report = env.report("shoes");
    let rows = report["jobs"].as_array().expect("rows");
    let row = |name: &str| {
        rows.iter()
            .find(|row| row["input"].as_str().unwrap_or_default().ends_with(name))
            .unwrap_or_else(|| panic!("no row for {name}: {report:#}"))
    };
    for name in ["sku-0.png", "sku-1.png"] {
        assert_eq!(row(name)["status"], "done", "{report:#}");
    }
    for (name, says) in [
        (
            "gone.png",
            "is not in the bucket (no object at s3://catalog/raw/in/gone.png)",
        ),
        ("empty.png", "is empty (0 bytes)"),
        ("notes.png", "is not an image Claid accepts: it is text"),
    ] {
        let reason = row(name)["reason"].as_str().unwrap_or_default();
        assert!(
            row(name)["status"] == "failed"
                && reason.starts_with("input-unreadable")
                && reason.contains(says)
                && reason.contains("nothing was billed"),
            "{name}: {reason}"
        );
    }
    // Claid saw the two good images only.
    let stats = env.stats();
    assert_eq!(stats.batch_images + stats.submits, 2, "{stats:?}");
    s3.stop().await;
}

/// A bucket that answers "NoSuchBucket" (deleted, or a proxy answering for another) answers
/// every HEAD `404` without a body, like a missing object. The looks before the submit took
/// that for "nothing there" and every image was submitted and billed, then failed
/// `object-missing`, which a replay billed again. The daemon lists the bucket to tell the two
/// apart: while it is gone nothing is sent (an outage of the storage, named), and once it is
/// back each image is looked at afresh: under `replace` made once each, under `skip` the
/// object already at the first one's key kept, untouched and unbilled.
#[tokio::test(flavor = "multi_thread")]
async fn issue15_a_bucket_that_is_gone_mid_run_is_waited_out_not_billed_into() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    for (policy, billed) in [("replace", 2), ("skip", 1)] {
        let (env, mut daemon, key, kept) =
            looking_before_the_submit(&s3, policy, "", Some(("404 Not Found", "NoSuchBucket")))
                .await;
        crate::support::wait_until(
            "the missing bucket named",
            std::time::Duration::from_secs(60),
            || env.daemon_log(0).contains("does not exist (NoSuchBucket)"),
        )
        .await;
        let stats = env.stats();
        assert_eq!(stats.submits + stats.batch_images, 0, "{policy}: {stats:?}");
        assert!(
            !env.outbox.join("shoes.report.json").exists(),
            "{policy}: nothing ends while the bucket is gone"
        );
        // The bucket is back.
        env.switch.off().await;
        env.switch.on();
        crate::support::wait_until("the report", std::time::Duration::from_secs(120), || {
            env.outbox.join("shoes.report.json").exists()
        })
        .await;
        let report = env.report("shoes");
        let rows = report["jobs"].as_array().expect("rows");
        let want = if policy == "skip" { "skipped" } else { "done" };
        assert_eq!(rows[0]["status"], want, "{policy}: {report:#}");
        assert_eq!(rows[1]["status"], "done", "{policy}: {report:#}");
        let stats = env.stats();
        assert_eq!(
            stats.submits + stats.batch_images,
            billed,
            "{policy}: {stats:?}"
        );
        assert_eq!(stats.duplicate_submits, 0, "{policy}: {stats:?}");
        let now = s3.get_object("catalog", &key).await.expect("object");
        if policy == "skip" {
            assert_eq!(now, kept, "skip kept the object");
        } else {
            assert_ne!(now, kept, "the edit replaced the object");
        }
        crate::support::stop(&mut daemon).await;
    }
    s3.stop().await;
}

/// Claid's connector renamed (and `claid_name` with it, as the start's error says to) after
/// a kill, with the canary at Claid and two images still queued: the next run sends the
/// queued images under the new name, and takes the canary's objects, written under the old
/// one, as the storage's. Each image is billed once, all done. (Every queued image failed
/// `claid-invalid-request`, Claid refusing the old name, at every replay: acceptance run.)
#[tokio::test(flavor = "multi_thread")]
async fn a_connector_renamed_at_claid_and_in_the_config_is_followed_by_queued_jobs() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let scenario = Scenario::default()
        .latency(Latency::Fixed(std::time::Duration::from_secs(2)))
        .seed(7);
    let (env, config) = storage_env(&s3, scenario, "", 4).await;
    // Renamed once Claid wrote the canary's objects (under the old name).
    killed_with_the_canary_written(&env, &config, &s3).await;
    patch_connector(&env, 1, serde_json::json!({"name": "catalog-new"})).await;
    // The old name: refused at the start, naming the fix.
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("catalog-new"), "{stderr}");
    let keys = credentials_file(env.dir.path());
    let renamed = env.config(
        "",
        &storages_yaml("catalog-new", "s3://catalog/raw", &s3.endpoint, &keys),
    );
    let (code, stderr) = env.run_once(&renamed).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("connector was renamed since the last start"),
        "{stderr}"
    );
    let report = env.report("shoes");
    let rows = report["jobs"].as_array().expect("rows");
    assert!(rows.iter().all(|r| r["status"] == "done"), "{report:#}");
    let stats = env.stats();
    assert_eq!(
        stats.batch_images + stats.submits,
        4,
        "each image billed once: {stats:?}"
    );
    assert_eq!(stats.duplicate_submits, 0);
    let mut keys = s3.list_keys("catalog", "raw/out/").await;
    keys.sort();
    assert_eq!(keys.len(), 4, "{keys:?}");
    s3.stop().await;
}

/// Two storages on two buckets whose connector names were swapped at Claid (and in the
/// config) after a kill, with a canary at Claid and two images queued: the queued images are
/// sent under their storage's new name, into their own bucket, and the canary's objects,
/// written before the swap, are taken from their own bucket. Nothing lands in the other
/// bucket; each image is billed once. (The queued images were sent under the old names,
/// into the other bucket, and recorded done there: acceptance run.)
#[tokio::test(flavor = "multi_thread")]
async fn connector_names_swapped_between_two_storages_keep_each_job_in_its_bucket() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    s3.create_bucket("catalog").await;
    s3.create_bucket("other").await;
    for i in 0..4 {
        let bytes = crate::support::png(40 + i, 30);
        s3.put_object("catalog", &format!("raw/in/sku-{i}.png"), &bytes)
            .await;
    }
    let scenario = Scenario::default()
        .latency(Latency::Fixed(std::time::Duration::from_secs(2)))
        .seed(7)
        .storage(s3.connector("catalog-s3", "catalog", "raw"))
        .storage(s3.connector("other-s3", "other", "raw"));
    let env = TestEnv::new(scenario).await;
    let keys = credentials_file(env.dir.path());
    let storages = |catalog: &str, other: &str| {
        format!(
            "storages:\n  catalog:\n    claid_name: {catalog}\n    url: s3://catalog/raw\n    endpoint: {e}\n    credentials_file: {k}\n  other:\n    claid_name: {other}\n    url: s3://other/raw\n    endpoint: {e}\n    credentials_file: {k}\n",
            e = s3.endpoint,
            k = keys.display()
        )
    };
    let config = env.config("", &storages("catalog-s3", "other-s3"));
    killed_with_the_canary_written(&env, &config, &s3).await;
    for (id, name) in [(1, "swapping"), (2, "catalog-s3"), (1, "other-s3")] {
        patch_connector(&env, id, serde_json::json!({"name": name})).await;
    }
    let swapped = env.config("", &storages("other-s3", "catalog-s3"));
    let (code, stderr) = env.run_once(&swapped).await;
    assert_eq!(code, 0, "{stderr}");
    let report = env.report("shoes");
    let rows = report["jobs"].as_array().expect("rows");
    assert!(rows.iter().all(|r| r["status"] == "done"), "{report:#}");
    assert_eq!(billed(&env), 4, "each image billed once");
    assert_eq!(s3.list_keys("catalog", "raw/out/").await.len(), 4);
    assert!(
        s3.list_keys("other", "raw/").await.is_empty(),
        "nothing in the other bucket"
    );
    s3.stop().await;
}

/// Points Claid's connector `catalog-s3` (the scenario's, id 1) at `path` of its bucket, as an
/// operator would in Claid's dashboard.
async fn move_connector(env: &TestEnv, path: &str) {
    patch_connector(env, 1, serde_json::json!({"parameters": {"path": path}})).await;
}

/// Changes Claid's connector `id` as `change` says (`PATCH /storage/storages/{id}`), as an
/// operator would in Claid's dashboard.
async fn patch_connector(env: &TestEnv, id: u32, change: serde_json::Value) {
    let url = format!("{}/storage/storages/{id}", env.emulator.base_url());
    let answer = reqwest::Client::new()
        .patch(&url)
        .bearer_auth("test-key")
        .json(&change)
        .send()
        .await
        .expect("connector updated");
    assert!(answer.status().is_success(), "{:?}", answer.text().await);
}

/// Drops four images of `catalog` with storage outputs, runs `run --once` with `config` and
/// kills it (-9) once the canary's batch is recorded, then waits until Claid wrote the
/// canary's two objects: two images at Claid, done, and two queued.
async fn killed_with_the_canary_written(env: &TestEnv, config: &Path, s3: &S3Server) {
    env.drop_file(
        "shoes.yaml",
        b"output: { format: jpeg, destination: storage://catalog/out/ }\nimages:\n  - storage://catalog/in/sku-0.png\n  - storage://catalog/in/sku-1.png\n  - storage://catalog/in/sku-2.png\n  - storage://catalog/in/sku-3.png\n",
    );
    let (mut once, log_path) = spawn_run_once(env, config);
    let deadline = std::time::Duration::from_secs(60);
    crate::support::wait_until("the canary is submitted and recorded", deadline, || {
        std::fs::read_to_string(&log_path).is_ok_and(|log| log.contains("Batch submitted"))
    })
    .await;
    once.start_kill().expect("kill -9");
    let _ = once.wait().await;
    crate::support::wait_until_async("the canary's objects", deadline, || async {
        s3.list_keys("catalog", "raw/out/").await.len() >= 2
    })
    .await;
}

/// The storage `catalog` of the config pointed at `url` (the config file written again).
fn config_at(env: &TestEnv, s3: &S3Server, url: &str) -> PathBuf {
    let keys = credentials_file(env.dir.path());
    env.config("", &storages_yaml("catalog-s3", url, &s3.endpoint, &keys))
}

const TWO_SHOES: &[u8] = b"output: { format: jpeg, destination: storage://catalog/out/ }\nimages:\n  - storage://catalog/in/sku-0.png\n  - storage://catalog/in/sku-1.png\n";

/// Claid's connector and the storage's `url` moved to another prefix together (the daemon
/// killed in between) while Claid had already written the run's objects under the old one:
/// the next run finds each object where the storage pointed when its image was submitted and
/// copies it to where it points now. Each image is billed once (they failed `object-missing`,
/// and `replay --failed` billed them again; acceptance run). Also when another image already
/// lies at one output's key at the new place (a stale object of an older sync): the edit is
/// copied over it (it failed `result-mismatch`, and a replay billed the image again, the
/// paid edit left at the old place; acceptance run).
#[tokio::test(flavor = "multi_thread")]
async fn issue15_objects_written_before_the_connector_and_url_moved_are_copied_not_billed_again() {
    for stale in [false, true] {
        objects_written_before_a_move_are_copied(stale).await;
    }
}

async fn objects_written_before_a_move_are_copied(stale: bool) {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let scenario = Scenario::default()
        .latency(Latency::Fixed(std::time::Duration::from_secs(2)))
        .seed(7);
    let (env, config) = storage_env(&s3, scenario, "", 2).await;
    env.drop_file("shoes.yaml", TWO_SHOES);
    let (mut once, log_path) = spawn_run_once(&env, &config);
    let deadline = std::time::Duration::from_secs(60);
    crate::support::wait_until("the batch is submitted and recorded", deadline, || {
        std::fs::read_to_string(&log_path).is_ok_and(|log| log.contains("Batch submitted"))
    })
    .await;
    crate::support::wait_until_async("Claid wrote both objects", deadline, || async {
        s3.list_keys("catalog", "raw/out/shoes/").await.len() == 2
    })
    .await;
    once.start_kill().expect("kill -9");
    let _ = once.wait().await;

    move_connector(&env, "moved").await;
    if stale {
        s3.put_object(
            "catalog",
            "moved/out/shoes/sku-1.jpg",
            &crate::support::png(60, 90),
        )
        .await;
    }
    let config = config_at(&env, &s3, "s3://catalog/moved");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "stale {stale}: {stderr}");
    assert!(
        stderr.contains("copied to where the storage points now") && !stderr.contains("Job failed"),
        "stale {stale}: {stderr}"
    );
    assert_eq!(
        stderr.contains("copied over it, not billed again"),
        stale,
        "stale {stale}: {stderr}"
    );
    let report = env.report("shoes");
    let rows = report["jobs"].as_array().expect("rows");
    assert!(rows.iter().all(|r| r["status"] == "done"), "{report:#}");
    let mut moved = s3.list_keys("catalog", "moved/out/shoes/").await;
    moved.sort();
    assert_eq!(
        moved,
        ["moved/out/shoes/sku-0.jpg", "moved/out/shoes/sku-1.jpg"]
    );
    // The copies are Claid's objects, byte for byte.
    for name in ["sku-0.jpg", "sku-1.jpg"] {
        let written = s3
            .get_object("catalog", &format!("raw/out/shoes/{name}"))
            .await;
        let copied = s3
            .get_object("catalog", &format!("moved/out/shoes/{name}"))
            .await;
        assert!(written.is_some() && written == copied, "{name}");
    }
    let stats = env.stats();
    assert_eq!(
        stats.batch_images + stats.submits,
        2,
        "each image billed once"
    );
    assert_eq!(stats.duplicate_submits, 0);
    s3.stop().await;
}

/// Claid's connector moved to another prefix during a daemon's run, its config unchanged:
/// Claid writes the outputs where the daemon does not look. The first object missing has the
/// daemon compare the connector again; the storage is then held (an ERROR naming both places),
/// nothing failed, and no image of it is submitted while the config says otherwise (every
/// output was billed and failed `object-missing`, and the daemon kept submitting; acceptance
/// run). Restarted with the storage's `url` fixed, the daemon finds the objects Claid wrote,
/// each image billed once.
#[tokio::test(flavor = "multi_thread")]
async fn issue15_a_connector_moved_at_claid_during_the_run_holds_its_storage_not_its_bills() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let scenario = Scenario::default()
        .latency(Latency::Fixed(std::time::Duration::from_millis(500)))
        .seed(7);
    let (env, config) = storage_env(&s3, scenario, "", 4).await;
    let mut daemon =
        env.spawn_daemon_with(&config, 0, &[("RUST_LOG", "info,claid_hotfolder=debug")]);
    let deadline = std::time::Duration::from_secs(90);
    crate::support::wait_until("the daemon watches", deadline, || {
        env.daemon_log(0).contains("Watching the inbox")
    })
    .await;
    // Moved with the inputs copied along, so that Claid reads them where it points now.
    move_connector(&env, "moved").await;
    for i in 0..4 {
        let bytes = crate::support::png(40 + i, 30);
        s3.put_object("catalog", &format!("moved/in/sku-{i}.png"), &bytes)
            .await;
    }
    env.drop_file("shoes.yaml", TWO_SHOES);
    crate::support::wait_until("the moved connector is found", deadline, || {
        env.daemon_log(0)
            .contains("Claid's connector changed during the run")
    })
    .await;
    let log = env.daemon_log(0);
    assert!(
        log.contains("s3://catalog/moved") && log.contains("s3://catalog/raw"),
        "both places are named:\n{log}"
    );
    assert_eq!(env.stats().batch_images + env.stats().submits, 2);
    // A new manifest of the storage waits, unsent.
    env.drop_file(
        "boots.yaml",
        b"output: { format: jpeg, destination: storage://catalog/out/ }\nimages:\n  - storage://catalog/in/sku-2.png\n  - storage://catalog/in/sku-3.png\n",
    );
    crate::support::wait_until("the new images are held", deadline, || {
        env.daemon_log(0)
            .matches("Not submitted: a storage it uses is held until a restart")
            .count()
            >= 2
    })
    .await;
    let status = crate::support::stop(&mut daemon).await;
    assert!(status.success(), "{status:?}");
    let log = env.daemon_log(0);
    assert!(!log.contains("Job failed"), "nothing failed:\n{log}");
    assert_eq!(
        env.stats().batch_images + env.stats().submits,
        2,
        "nothing more was sent"
    );

    // The config follows the connector.
    let config = config_at(&env, &s3, "s3://catalog/moved");
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    for stem in ["shoes", "boots"] {
        let report = env.report(stem);
        let rows = report["jobs"].as_array().expect("rows");
        assert!(rows.iter().all(|r| r["status"] == "done"), "{report:#}");
    }
    let mut keys = s3.list_keys("catalog", "moved/out/").await;
    keys.sort();
    assert_eq!(
        keys,
        [
            "moved/out/boots/sku-2.jpg",
            "moved/out/boots/sku-3.jpg",
            "moved/out/shoes/sku-0.jpg",
            "moved/out/shoes/sku-1.jpg"
        ]
    );
    let stats = env.stats();
    assert_eq!(
        stats.batch_images + stats.submits,
        4,
        "each image billed once"
    );
    assert_eq!(stats.duplicate_submits, 0);
    s3.stop().await;
}

/// Claid's connector of the staging storage moved at Claid during a daemon's run: Claid looks
/// for the staged inputs where the daemon did not put them and fails them. Those images go back
/// to the queue (they failed `claid-error`, every batch was sent into the moved connector, and
/// a replay was needed; acceptance run), the storage is held, and no other image of it is
/// sent. Restarted with the storage's `url` fixed, every image is made.
#[tokio::test(flavor = "multi_thread")]
async fn issue15_staged_inputs_claid_cannot_read_through_a_moved_connector_wait_for_the_fix() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let (env, _) = storage_env(&s3, quick(), "", 0).await;
    let keys = credentials_file(env.dir.path());
    let storages = storages_yaml("catalog-s3", "s3://catalog/raw", &s3.endpoint, &keys);
    let config = env.config("staging: catalog", &storages);
    let mut daemon =
        env.spawn_daemon_with(&config, 0, &[("RUST_LOG", "info,claid_hotfolder=debug")]);
    let deadline = std::time::Duration::from_secs(90);
    crate::support::wait_until("the daemon watches", deadline, || {
        env.daemon_log(0).contains("Watching the inbox")
    })
    .await;
    move_connector(&env, "other").await;
    drop_local_manifest(&env, 4, false);
    crate::support::wait_until("the moved connector is found", deadline, || {
        env.daemon_log(0)
            .contains("Claid's connector changed during the run")
    })
    .await;
    crate::support::wait_until("the images wait for the restart", deadline, || {
        let log = env.daemon_log(0);
        log.matches("it reads or writes a storage whose connector moved")
            .count()
            + log
                .matches("Not submitted: a storage it uses is held")
                .count()
            >= 4
    })
    .await;
    let status = crate::support::stop(&mut daemon).await;
    assert!(status.success(), "{status:?}");
    let log = env.daemon_log(0);
    assert!(!log.contains("Job failed"), "nothing failed:\n{log}");

    let config = env.config(
        "staging: catalog",
        &storages_yaml("catalog-s3", "s3://catalog/other", &s3.endpoint, &keys),
    );
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    let report = env.report("shoes");
    let rows = report["jobs"].as_array().expect("rows");
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|r| r["status"] == "done"), "{report:#}");
    assert_eq!(images_under(&env.outbox).len(), 4);
    s3.stop().await;
}

/// `run --once` whose storage is held (Claid's connector moved during the run) ends 64 with
/// images still at Claid; the connector is then moved back (the config left as it was): the
/// next run finds every image Claid wrote where the connector pointed, and copies it back,
/// billed once. (Only the job that found the move noted where it pointed: the others, still
/// at Claid, failed `object-missing`, and the replay billed them again; acceptance run.)
#[tokio::test(flavor = "multi_thread")]
async fn issue15_run_once_held_by_a_moved_connector_finds_every_image_once_it_is_moved_back() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let scenario = Scenario::default()
        .latency(Latency::Fixed(std::time::Duration::from_secs(1)))
        .seed(7);
    let (env, config) = storage_env(&s3, scenario, "", 8).await;
    for i in 0..8 {
        let bytes = crate::support::png(40 + i, 30);
        s3.put_object("catalog", &format!("other/in/sku-{i}.png"), &bytes)
            .await;
    }
    let mut manifest =
        String::from("output: { format: jpeg, destination: storage://catalog/out/ }\nimages:\n");
    for i in 0..8 {
        manifest.push_str(&format!("  - storage://catalog/in/sku-{i}.png\n"));
    }
    env.drop_file("shoes.yaml", manifest.as_bytes());
    let (mut once, log_path) = spawn_run_once(&env, &config);
    let deadline = std::time::Duration::from_secs(90);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    // Moved once the canary is at Claid: the batches after it are written under `other/`.
    crate::support::wait_until("the canary is submitted", deadline, || {
        log().contains("Batch submitted")
    })
    .await;
    move_connector(&env, "other").await;
    let status = tokio::time::timeout(deadline, once.wait())
        .await
        .expect("run --once ends")
        .expect("exit status");
    assert_eq!(status.code(), Some(64), "{}", log());
    assert!(
        log().contains("Claid's connector changed during the run") && !log().contains("Job failed"),
        "{}",
        log()
    );
    let billed = env.stats().batch_images + env.stats().submits;
    assert_eq!(billed, 8, "every image was sent once: {:?}", env.stats());

    move_connector(&env, "raw").await;
    let (code, stderr) = env.run_once(&config).await;
    assert_eq!(code, 0, "{stderr}");
    let report = env.report("shoes");
    let rows = report["jobs"].as_array().expect("rows");
    assert!(rows.iter().all(|r| r["status"] == "done"), "{report:#}");
    assert_eq!(s3.list_keys("catalog", "raw/out/shoes/").await.len(), 8);
    let stats = env.stats();
    assert_eq!(
        stats.batch_images + stats.submits,
        8,
        "each image billed once"
    );
    s3.stop().await;
}
