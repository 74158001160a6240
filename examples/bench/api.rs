//! The rows of issue 12 (batches, webhooks, the limiter) and issue 11's scrape time: how many
//! images per second the daemon gets out of Claid's default limits (4 requests/s, 120 per
//! minute), how many API requests each image costs, and what a `/metrics` scrape costs with a
//! large history.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use anyhow::Result;
use claid_hotfolder::emulator::{Latency, Scenario, Stats};

use super::{Bench, CLAID_DEFAULT, Emu, Knobs, Notes, Row, Work, exit_text, median};

/// The polling bound of single mode: 2 requests per image at 120 requests/minute.
const POLLING_BOUND: f64 = 1.0;
/// The shared secret of the bench's webhooks.
const SECRET: &str = "bench-webhook-secret-0123456789";

/// Claid's default limits, task latency lognormal with a 3 s median.
fn claid_like(seed: u64) -> Scenario {
    Scenario::default()
        .latency(Latency::LogNormal {
            median: Duration::from_secs(3),
            sigma: 0.5,
        })
        .rps(4)
        .rpm(120)
        .seed(seed)
}

/// API requests the emulator counted (submits, polls, batches, uploads, sync edits).
fn requests(s: &Stats) -> u64 {
    s.submits + s.polls + s.batch_submits + s.batch_polls + s.uploads + s.sync_edits
}

/// Billable images: async submits, batch images, uploads and sync edits.
fn billed(s: &Stats) -> u64 {
    s.submits + s.batch_images + s.uploads + s.sync_edits
}

/// A folder of `n` small PNGs the emulator serves at `/_static/`, and a manifest of their
/// `http://` URLs (one shared body, so they may share batches).
fn http_inputs(work: &Work, emu_addr: &str, n: usize, static_dir: &std::path::Path) -> Result<()> {
    let png = super::png(64, 48);
    let mut text =
        String::from("operations: { resizing: { width: 32 } }\noutput: { format: png }\nimages:\n");
    for i in 0..n {
        let name = format!("b{i:06}.png");
        fs::write(static_dir.join(&name), &png)?;
        writeln!(text, "  - input: http://{emu_addr}/_static/{name}")?;
    }
    let tmp = work.inbox.join(".m.yaml.part");
    fs::write(&tmp, text)?;
    fs::rename(&tmp, work.inbox.join("m.yaml"))?;
    Ok(())
}

/// Appends keys to the config: `api_extra` under `api:`, `extra` at the top.
fn extend_config(work: &Work, api_extra: &str, extra: &str) -> Result<()> {
    let text = fs::read_to_string(&work.config)?;
    let mut api = String::from("api:\n");
    for line in api_extra.lines() {
        writeln!(api, "  {line}")?;
    }
    let text = text.replacen("api:\n", &api, 1);
    fs::write(&work.config, format!("{text}{extra}"))?;
    Ok(())
}

/// The webhook section on a free port, with the secret in a private file.
fn webhook_section(work: &Work, port: u16, fallback: &str) -> Result<String> {
    let secret = work.root().join("webhook-secret");
    fs::write(&secret, format!("{SECRET}\n"))?;
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600))?;
    Ok(format!(
        "webhook:\n  listen: 127.0.0.1:{port}\n  secret_file: \"{}\"\n  poll_fallback: {fallback}\n",
        secret.display()
    ))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One measured run of this file's rows.
struct Measured {
    images: usize,
    wall: Duration,
    stats: Stats,
    exit: String,
}

impl Measured {
    fn ips(&self) -> f64 {
        self.images as f64 / self.wall.as_secs_f64()
    }

    fn per_image(&self) -> f64 {
        requests(&self.stats) as f64 / self.images as f64
    }

    fn text(&self) -> String {
        let s = &self.stats;
        format!(
            "{} images in {:.1} s = {:.2} images/s ({:.2}× the polling bound); {:.3} requests/image ({} submits, {} polls, {} batches, {} batch polls); {} × 429; billed {:.3} per image, duplicates {}; webhooks sent {}, dropped {}; exit {}",
            self.images,
            self.wall.as_secs_f64(),
            self.ips(),
            self.ips() / POLLING_BOUND,
            self.per_image(),
            s.submits,
            s.polls,
            s.batch_submits,
            s.batch_polls,
            s.rate_limited,
            billed(s) as f64 / self.images as f64,
            s.duplicate_submits,
            s.webhooks_sent,
            s.webhooks_dropped,
            self.exit,
        )
    }
}

impl Bench {
    /// Runs the daemon over `n` `http://` inputs against `scenario` (with `webhooks` when
    /// given, as the fraction of webhooks lost), with `api_extra` keys.
    fn api_run(
        &self,
        scenario: Scenario,
        n: usize,
        api_extra: &str,
        webhooks: Option<f64>,
        knobs: &Knobs,
    ) -> Result<Measured> {
        let static_dir = tempfile::tempdir()?;
        let port = free_port()?;
        let scenario = scenario.static_dir(static_dir.path());
        let scenario = match webhooks {
            Some(lost) => scenario
                .webhook_url(format!("http://127.0.0.1:{port}/webhooks/claid"))
                .webhook_secret(SECRET)
                .webhook_drop_share(lost),
            None => scenario,
        };
        let emu = Emu::start(scenario, 2)?;
        let work = self.workdir()?;
        work.write_config(&emu.base_url(), knobs)?;
        let addr = emu.handle().addr().to_string();
        http_inputs(&work, &addr, n, static_dir.path())?;
        let extra = match webhooks {
            Some(_) => webhook_section(&work, port, "2m")?,
            None => String::new(),
        };
        extend_config(&work, api_extra, &extra)?;
        let r = self.run_daemon(&work)?;
        let measured = Measured {
            images: n,
            wall: r.wall,
            stats: emu.stats(),
            exit: exit_text(r.status),
        };
        drop(work);
        Ok(measured)
    }

    /// Batches of `http://` inputs sharing one body, 256 images in flight, at three per-batch
    /// parallelisms of the emulator (Claid does not publish its own).
    pub fn batch(&self, n: usize, notes: &mut Notes) -> Result<Vec<Row>> {
        let knobs = Knobs {
            max_in_flight: 256,
            ..CLAID_DEFAULT
        };
        let mut rows = Vec::new();
        for parallel in [8, 16, 32] {
            let m = self.api_run(
                claid_like(21).batch_parallelism(parallel),
                n,
                "",
                None,
                &knobs,
            )?;
            notes.add(format!(
                "batch, {parallel} images at once per batch: {}",
                m.text()
            ));
            rows.push(Row {
                figure: "batches: images/s, requests/image",
                scenario: format!(
                    "{n} URL images, one body, max_in_flight 256 (batches of at most 64, sized to the pace), default limits, lognormal 3 s; the emulator processes {parallel} images of a batch at once"
                ),
                measured: format!(
                    "{:.2} images/s = {:.1}× the polling bound; {:.3} requests/image; {} × 429",
                    m.ips(),
                    m.ips() / POLLING_BOUND,
                    m.per_image(),
                    m.stats.rate_limited
                ),
                target: "≥ 10× the polling bound, ≤ 0.1 requests/image",
                met: Some(m.ips() >= 10.0 * POLLING_BOUND && m.per_image() <= 0.1),
            });
        }
        Ok(rows)
    }

    /// Webhooks without batches, with 10% and 30% of the webhooks lost.
    pub fn webhooks(&self, n: usize, notes: &mut Notes) -> Result<Vec<Row>> {
        let mut rows = Vec::new();
        for (lost, max_per_image, min_ratio) in [(0.1, 1.2, 1.6), (0.3, 1.4, 0.0)] {
            let m = self.api_run(
                claid_like(22),
                n,
                "batch: { max_images: 1 }",
                Some(lost),
                &CLAID_DEFAULT,
            )?;
            notes.add(format!("webhooks, {:.0}% lost: {}", lost * 100.0, m.text()));
            let delivered = n as u64; // every run ends with every image done or it says so
            rows.push(Row {
                figure: "webhooks: images/s, requests/image, lost",
                scenario: format!(
                    "{n} URL images, no batches, default limits, lognormal 3 s, {:.0}% of webhooks lost",
                    lost * 100.0
                ),
                measured: format!(
                    "{:.2} images/s = {:.2}× the polling bound; {:.3} requests/image; exit {}",
                    m.ips(),
                    m.ips() / POLLING_BOUND,
                    m.per_image(),
                    m.exit
                ),
                target: if lost < 0.2 {
                    "≥ 1.6× the polling bound, ≤ 1.2 requests/image, 0 lost"
                } else {
                    "0 lost, ≤ 1.4 requests/image"
                },
                met: Some(
                    m.per_image() <= max_per_image
                        && m.ips() >= min_ratio * POLLING_BOUND
                        && m.exit == "0"
                        && delivered == n as u64,
                ),
            });
        }
        Ok(rows)
    }

    /// Batches and webhooks together.
    pub fn batch_webhooks(&self, n: usize, notes: &mut Notes) -> Result<Vec<Row>> {
        let knobs = Knobs {
            max_in_flight: 256,
            ..CLAID_DEFAULT
        };
        let m = self.api_run(claid_like(23), n, "", Some(0.0), &knobs)?;
        notes.add(format!("batches + webhooks: {}", m.text()));
        Ok(vec![Row {
            figure: "batches + webhooks: requests/image",
            scenario: format!(
                "{n} URL images, one body, max_in_flight 256, default limits, lognormal 3 s, webhooks on"
            ),
            measured: format!(
                "{:.3} requests/image; {:.2} images/s",
                m.per_image(),
                m.ips()
            ),
            target: "≤ 0.03 requests/image",
            met: Some(m.per_image() <= 0.03),
        }])
    }

    /// A drop smaller than the minute quota, single mode, against a fixed- and a sliding-window
    /// server: the share of the time-optimal schedule. Optimal: every request (a submit and a
    /// poll per image) at `rps` per second from the start, plus the median task latency for
    /// the last one.
    pub fn small_drop(&self, n: usize, notes: &mut Notes) -> Result<Vec<Row>> {
        use claid_hotfolder::emulator::RateWindow;
        let mut rows = Vec::new();
        for window in [RateWindow::Fixed, RateWindow::Sliding] {
            let m = self.api_run(
                claid_like(24).rate_window(window),
                n,
                "batch: { max_images: 1 }",
                None,
                &CLAID_DEFAULT,
            )?;
            let optimal = (2 * n) as f64 / 4.0 + 3.0;
            let share = optimal / m.wall.as_secs_f64();
            notes.add(format!(
                "small drop, {window:?} window: {} (optimal {optimal:.1} s: {share:.2})",
                m.text()
            ));
            rows.push(Row {
                figure: "small drop: share of the time-optimal schedule, 429s",
                scenario: format!(
                    "{n} URL images, single mode, 4 rps / 120 rpm, {window:?} window, lognormal 3 s"
                ),
                measured: format!(
                    "{share:.2} ({:.1} s against {optimal:.1} s); {} × 429",
                    m.wall.as_secs_f64(),
                    m.stats.rate_limited
                ),
                target: "≥ 0.9, zero 429s",
                met: Some(share >= 0.9 && m.stats.rate_limited == 0),
            });
        }
        Ok(rows)
    }

    /// What a submit costs per delivered image, with webhooks on and 3% of submit answers lost.
    pub fn billing(&self, n: usize, notes: &mut Notes) -> Result<Vec<Row>> {
        let m = self.api_run(
            claid_like(25).drop_share(0.03),
            n,
            "batch: { max_images: 1 }",
            Some(0.0),
            &CLAID_DEFAULT,
        )?;
        notes.add(format!("billing, 3% of submit answers lost: {}", m.text()));
        let per = billed(&m.stats) as f64 / n as f64;
        Ok(vec![Row {
            figure: "submits billed per delivered image, duplicates",
            scenario: format!(
                "{n} URL images, webhooks on, 3% of submit answers lost ({} lost)",
                m.stats.dropped_responses
            ),
            measured: format!("{per:.3}; {} duplicates", m.stats.duplicate_submits),
            target: "1.00, duplicates 0",
            met: Some(m.stats.duplicate_submits == 0 && (per - 1.0).abs() < 1e-9),
        }])
    }

    /// `/metrics` over the admin socket with a small and a large store: its cost follows the
    /// runs that are active, not the jobs ever stored.
    pub fn scrape(&self, sizes: [(usize, usize); 2], notes: &mut Notes) -> Result<Vec<Row>> {
        const SAMPLES: usize = 51;
        let mut measured = Vec::new();
        for (manifests, per) in sizes {
            let emu = Emu::start(
                Scenario::default()
                    .latency(Latency::Fixed(Duration::from_secs(3600)))
                    .seed(26),
                1,
            )?;
            let work = self.workdir()?;
            work.write_config(&emu.base_url(), &CLAID_DEFAULT)?;
            for m in 0..manifests {
                work.write_manifest(&format!("m{m:03}.yaml"), &format!("m{m:03}-"), per)?;
            }
            let mut child = self.spawn(&work, "daemon.log")?;
            let log = work.root().join("daemon.log");
            let t0 = Instant::now();
            while fs::read_to_string(&log)
                .unwrap_or_default()
                .matches("Manifest accepted")
                .count()
                < manifests
            {
                if child.try_wait()?.is_some() || t0.elapsed() > Duration::from_secs(3600) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let socket = work.root().join("admin.sock");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let mut times = Vec::new();
            for i in 0..SAMPLES + 3 {
                let started = Instant::now();
                let answer = rt.block_on(claid_hotfolder::admin::request(
                    &socket, "GET", "/metrics", None,
                ))?;
                if i >= 3 {
                    times.push(started.elapsed().as_secs_f64() * 1000.0);
                }
                anyhow::ensure!(answer.0 == 200, "/metrics answered {}", answer.0);
            }
            child.kill().ok();
            child.wait()?;
            let jobs = manifests * per;
            let p50 = median(&times);
            notes.add(format!(
                "scrape: {jobs} jobs in {manifests} runs: /metrics p50 {p50:.2} ms over {SAMPLES} requests"
            ));
            measured.push((jobs, p50));
            drop(work);
        }
        let (small_jobs, small) = measured[0];
        let (big_jobs, big) = measured[1];
        Ok(vec![Row {
            figure: "`/metrics` scrape, median",
            scenario: format!(
                "{small_jobs} and {big_jobs} jobs stored (the latter in {} runs), over the admin socket",
                sizes[1].0
            ),
            measured: format!("{small:.2} ms at {small_jobs}, {big:.2} ms at {big_jobs}"),
            target: "O(runs active), not O(jobs stored)",
            met: None,
        }])
    }
}
