//! The rows of issue 15 (storages): local files through the synchronous upload endpoint,
//! the same files staged into a bucket and sent in batches (`api.staging`), and inputs and
//! outputs that stay in the bucket (`storage://` inputs, `output.destination`). Claid's default
//! limits, task latency lognormal with a 3 s median; the bucket is a real S3-protocol server
//! (moto's `moto_server`, which must be on the PATH: `pip install 'moto[server]'`).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use claid_hotfolder::emulator::{Latency, Scenario, StorageConnector};
use claid_hotfolder::objects::{Credentials, ObjectStorage, ObjectStorageConfig};

use super::{Bench, CLAID_DEFAULT, Emu, Notes, Row, exit_text};

const BUCKET: &str = "bench-catalog";
const PREFIX: &str = "raw";
const CONNECTOR: &str = "bench-s3";
const ACCESS_KEY: &str = "bench-access-key";
const SECRET_KEY: &str = "bench-secret-key";

/// moto's S3 server on a free port, killed when dropped.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Moto {
    fn start() -> Result<Moto> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start moto_server (pip install 'moto[server]')")?;
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("moto_server did not listen on {endpoint} within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Moto { child, endpoint })
    }

    fn storage(&self) -> ObjectStorageConfig {
        ObjectStorageConfig {
            bucket: BUCKET.to_owned(),
            prefix: PREFIX.to_owned(),
            endpoint: Some(self.endpoint.clone()),
            region: None,
            access: claid_hotfolder::objects::Access::S3(Credentials::new(ACCESS_KEY, SECRET_KEY)),
        }
    }

    /// Creates the bucket (moto checks that a request is signed, not the signature).
    fn create_bucket(&self) -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let url = format!("{}/{BUCKET}", self.endpoint);
        rt.block_on(async {
            reqwest::Client::new()
                .put(&url)
                .header(
                    "authorization",
                    "AWS4-HMAC-SHA256 Credential=bench-access-key/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0000",
                )
                .send()
                .await?
                .error_for_status()?;
            anyhow::Ok(())
        })
    }

    /// Writes `files` (key relative to the prefix → bytes) into the bucket.
    fn put_all(&self, files: &[(String, Vec<u8>)]) -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let storage = ObjectStorage::new(&self.storage())?;
        rt.block_on(async {
            for (key, bytes) in files {
                storage.put(key, bytes.clone().into()).await?;
            }
            anyhow::Ok(())
        })
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the images reach Claid and where the results go.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Local files, one synchronous upload each; results downloaded.
    Upload,
    /// Local files staged into the bucket, sent in batches; results downloaded.
    Staging,
    /// Inputs in the bucket, results written by Claid into it; nothing downloaded.
    Bucket,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Upload => "local files, upload endpoint",
            Mode::Staging => "local files, staging + batch",
            Mode::Bucket => "storage inputs and outputs",
        }
    }
}

struct Measured {
    images: usize,
    wall: Duration,
    requests: u64,
    /// Image bytes that crossed this machine (uploaded or downloaded by the daemon).
    bytes: u64,
    exit: String,
    detail: String,
}

fn dir_bytes(root: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path: PathBuf = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if !path.to_string_lossy().contains(".report.") {
                total += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    total
}

impl Bench {
    fn storage_run(&self, mode: Mode, n: usize) -> Result<Measured> {
        let moto = Moto::start()?;
        moto.create_bucket()?;
        let scenario = Scenario::default()
            .latency(Latency::LogNormal {
                median: Duration::from_secs(3),
                sigma: 0.5,
            })
            .rps(4)
            .rpm(120)
            .seed(31)
            .storage(StorageConnector {
                name: CONNECTOR.to_owned(),
                storage: moto.storage(),
            });
        let emu = Emu::start(scenario, 2)?;
        let work = self.workdir()?;
        work.write_config(&emu.base_url(), &CLAID_DEFAULT)?;
        let keys = work.root().join("s3-keys.yaml");
        fs::write(
            &keys,
            format!("access_key_id: {ACCESS_KEY}\nsecret_access_key: {SECRET_KEY}\n"),
        )?;
        let mut config = fs::read_to_string(&work.config)?;
        write!(
            config,
            "storages:\n  catalog:\n    claid_name: {CONNECTOR}\n    url: s3://{BUCKET}/{PREFIX}\n    endpoint: {}\n    credentials_file: \"{}\"\n",
            moto.endpoint,
            keys.display()
        )?;
        if mode == Mode::Staging {
            config = config.replacen("api:\n", "api:\n  staging: catalog\n", 1);
        }
        fs::write(&work.config, config)?;

        let mut manifest =
            String::from("operations: { resizing: { width: 32 } }\noutput: { format: png");
        if mode == Mode::Bucket {
            manifest.push_str(", destination: storage://catalog/out/");
        }
        manifest.push_str(" }\nimages:\n");
        let mut input_bytes = 0u64;
        let mut objects = Vec::new();
        for i in 0..n {
            // Distinct content per image (staging is content-addressed).
            let png = super::png(64 + (i % 64) as u32, 48 + (i / 64) as u32);
            input_bytes += png.len() as u64;
            let name = format!("s{i:06}.png");
            match mode {
                Mode::Bucket => {
                    writeln!(manifest, "  - storage://catalog/in/{name}")?;
                    objects.push((format!("in/{name}"), png));
                }
                Mode::Upload | Mode::Staging => {
                    fs::create_dir_all(work.inbox.join("m"))?;
                    fs::write(work.inbox.join("m").join(&name), &png)?;
                    writeln!(manifest, "  - m/{name}")?;
                }
            }
        }
        moto.put_all(&objects)?;
        let tmp = work.inbox.join(".m.yaml.part");
        fs::write(&tmp, manifest)?;
        fs::rename(&tmp, work.inbox.join("m.yaml"))?;

        let r = self.run_daemon(&work)?;
        let s = emu.stats();
        let downloaded = dir_bytes(&work.outbox);
        let uploaded = match mode {
            Mode::Bucket => 0,
            Mode::Upload | Mode::Staging => input_bytes,
        };
        let requests =
            s.submits + s.polls + s.batch_submits + s.batch_polls + s.uploads + s.sync_edits;
        Ok(Measured {
            images: n,
            wall: r.wall,
            requests,
            bytes: uploaded + downloaded,
            exit: exit_text(r.status),
            detail: format!(
                "{} uploads, {} submits, {} polls, {} batches ({} images), {} batch polls, {} × 429, duplicates {}; {} objects written by Claid",
                s.uploads,
                s.submits,
                s.polls,
                s.batch_submits,
                s.batch_images,
                s.batch_polls,
                s.rate_limited,
                s.duplicate_submits,
                s.storage_writes
            ),
        })
    }

    /// The three ways of issue 15, side by side.
    pub fn storage(&self, n: usize, notes: &mut Notes) -> Result<Vec<Row>> {
        let mut rows = Vec::new();
        // The upload endpoint's figures, which staging must beat.
        let mut upload = (f64::INFINITY, 0.0);
        for mode in [Mode::Upload, Mode::Staging, Mode::Bucket] {
            let m = self.storage_run(mode, n)?;
            let ips = m.images as f64 / m.wall.as_secs_f64();
            let per_image = m.requests as f64 / m.images as f64;
            let bytes = m.bytes as f64 / m.images as f64;
            if mode == Mode::Upload {
                upload = (per_image, ips);
            }
            notes.add(format!(
                "storage, {}: {} images in {:.1} s; {}; exit {}",
                mode.label(),
                m.images,
                m.wall.as_secs_f64(),
                m.detail,
                m.exit
            ));
            rows.push(Row {
                figure: "storages: requests/image, images/s, bytes through this machine/image",
                scenario: format!(
                    "{n} images, {}, default limits and max_in_flight, lognormal 3 s",
                    mode.label()
                ),
                measured: format!(
                    "{per_image:.3} requests/image; {ips:.2} images/s; {bytes:.0} bytes/image; exit {}",
                    m.exit
                ),
                target: match mode {
                    Mode::Upload => "baseline",
                    Mode::Staging => "fewer requests/image and more images/s than the upload endpoint",
                    Mode::Bucket => "≈ 0 bytes/image",
                },
                met: match mode {
                    Mode::Upload => None,
                    Mode::Staging => {
                        Some(m.exit == "0" && per_image < upload.0 && ips > upload.1)
                    }
                    Mode::Bucket => Some(m.exit == "0" && m.bytes == 0),
                },
            });
        }
        Ok(rows)
    }
}
