//! The benchmark of issue 6 (and the dashboard's row of issue 14): starts the emulator
//! in-process, runs the real daemon binary (`target/release/claid-hotfolder run --once`) against
//! it on generated inputs, and prints one markdown table of figures against their targets. A
//! report, not a test: nothing is asserted.
//!
//! ```text
//! cargo build --release && cargo run --release --example bench -- [--quick] [--only NAME]... [--runs N]
//! ```
//!
//! What each row measures and how: `docs/benchmark.md`.

#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use claid_hotfolder::config::WatchConfig;
use claid_hotfolder::emulator::{self, Latency, Scenario, Stats};
use clap::Parser;
use rand::SeedableRng;

#[path = "bench/api.rs"]
mod api;
#[path = "bench/storage.rs"]
mod storage;

/// Every row, in table order.
const ROWS: [&str; 15] = [
    "throughput",
    "ratelimit",
    "delay",
    "rss",
    "rss-rows",
    "restart",
    "scan",
    "overview",
    "scrape",
    "batch",
    "webhooks",
    "batchhooks",
    "smalldrop",
    "billing",
    "storage",
];

#[derive(Debug, Parser)]
#[command(about = "Benchmark of claid-hotfolder against the emulator (issue 6)")]
struct Args {
    /// Scaled-down counts (minutes instead of an hour); the table says so.
    #[arg(long)]
    quick: bool,
    /// Run only this row (repeatable): throughput, ratelimit, delay, rss, rss-rows, restart, scan,
    /// overview, scrape, batch, webhooks, batchhooks, smalldrop, billing, storage.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(ROWS))]
    only: Vec<String>,
    /// Runs per fast figure (throughput, delay, scan); the figure is their median.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Runs per slow figure (ratelimit, rss, restart).
    #[arg(long, default_value_t = 1)]
    slow_runs: usize,
    /// Keep the temporary folders (their paths are printed) to look at logs and outputs.
    #[arg(long)]
    keep: bool,
    /// `api.max_in_flight` of the unlimited scenarios (throughput, delay, rss, restart).
    #[arg(long, default_value_t = 256)]
    max_in_flight: usize,
    /// The daemon binary; default: `claid-hotfolder` next to the folder of this example.
    #[arg(long)]
    daemon: Option<PathBuf>,
    /// An earlier build to measure side by side in the same run (throughput, rss, restart): each
    /// of those rows runs this binary, then the current one.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Run the daemon with the `Environment=` of `systemd/claid-hotfolder.service` (its
    /// malloc settings), as the service runs it; without it, as a user running it by hand.
    #[arg(long)]
    unit_env: bool,
}

/// How the run is scaled.
struct Sizes {
    throughput: usize,
    ratelimit: usize,
    delay: usize,
    rss: [usize; 2],
    restart: usize,
    scan_folders: usize,
    scan_files_per_folder: usize,
    /// Images of the webhook and billing rows (issue 12).
    api: usize,
    /// Images of the batch rows (issue 12).
    batch: usize,
    /// (runs, jobs per run) of the scrape row's small and large store.
    scrape: [(usize, usize); 2],
    /// Images of the storage rows (issue 15).
    storage: usize,
    /// Active manifests and images per manifest of the dashboard's overview row (issue 14).
    overview: (usize, usize),
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                throughput: 2_000,
                ratelimit: 200,
                delay: 300,
                rss: [2_000, 20_000],
                restart: 20_000,
                scan_folders: 200,
                scan_files_per_folder: 100,
                overview: (200, 500),
                api: 100,
                batch: 200,
                scrape: [(1, 1_000), (20, 5_000)],
                storage: 100,
            }
        } else {
            Sizes {
                throughput: 10_000,
                ratelimit: 2_000,
                delay: 2_000,
                rss: [10_000, 100_000],
                restart: 100_000,
                scan_folders: 1_000,
                scan_files_per_folder: 100,
                overview: (200, 5_000),
                api: 300,
                batch: 1_000,
                scrape: [(1, 1_000), (200, 5_000)],
                storage: 1_000,
            }
        }
    }
}

/// One line of the table.
struct Row {
    figure: &'static str,
    scenario: String,
    measured: String,
    target: &'static str,
    /// `Some(true)` met, `Some(false)` missed, `None` not judged.
    met: Option<bool>,
}

/// Facts about the run kept for the notes under the table.
#[derive(Default)]
struct Notes(Vec<String>);

impl Notes {
    fn add(&mut self, line: impl Into<String>) {
        let line = line.into();
        eprintln!("  {line}");
        self.0.push(line);
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let sizes = Sizes::new(args.quick);
    let bench = Bench::new(&args)?;
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    let mut rows = Vec::new();
    let mut notes = Notes::default();

    // The rows measured side by side with an earlier build.
    let baseline = match &args.baseline {
        Some(path) => Some(Bench::with_daemon(&args, path.clone())?),
        None => None,
    };
    let label = |rows: Vec<Row>, which: &str| -> Vec<Row> {
        rows.into_iter()
            .map(|mut r| {
                r.scenario = format!("**{which}**: {}", r.scenario);
                r
            })
            .collect()
    };
    if wanted("throughput")
        && let Some(base) = &baseline
    {
        eprintln!("== throughput, baseline {}", base.daemon.display());
        rows.extend(label(
            base.throughput(sizes.throughput, args.runs, &mut notes)?,
            "baseline",
        ));
    }
    if wanted("throughput") {
        eprintln!(
            "== throughput: {} images, no latency, no rate limit",
            sizes.throughput
        );
        rows.extend(bench.throughput(sizes.throughput, args.runs, &mut notes)?);
    }
    if wanted("ratelimit") {
        eprintln!(
            "== ratelimit: {} images, 4 rps / 120 rpm, lognormal 3 s",
            sizes.ratelimit
        );
        rows.extend(bench.ratelimit(sizes.ratelimit, args.slow_runs, &mut notes)?);
    }
    if wanted("delay") {
        eprintln!(
            "== delay: {} images, lognormal 3 s, no rate limit",
            sizes.delay
        );
        rows.extend(bench.delay(sizes.delay, args.runs, &mut notes)?);
    }
    if wanted("rss")
        && let Some(base) = &baseline
    {
        eprintln!("== rss, baseline {}", base.daemon.display());
        rows.extend(label(
            base.rss(sizes.rss, args.slow_runs, &mut notes)?,
            "baseline",
        ));
    }
    if wanted("rss") {
        eprintln!("== rss: manifests of {:?} images", sizes.rss);
        rows.extend(bench.rss(sizes.rss, args.slow_runs, &mut notes)?);
    }
    if wanted("rss-rows")
        && let Some(base) = &baseline
    {
        eprintln!("== rss-rows, baseline {}", base.daemon.display());
        rows.extend(label(
            base.rss_rows(sizes.rss[1], args.slow_runs, &mut notes)?,
            "baseline",
        ));
    }
    if wanted("rss-rows") {
        eprintln!(
            "== rss-rows: a manifest of {} images, each with its own operations",
            sizes.rss[1]
        );
        rows.extend(bench.rss_rows(sizes.rss[1], args.slow_runs, &mut notes)?);
    }
    if wanted("restart")
        && let Some(base) = &baseline
    {
        eprintln!("== restart, baseline {}", base.daemon.display());
        rows.extend(label(
            base.restart(sizes.restart, args.slow_runs, &mut notes)?,
            "baseline",
        ));
    }
    if wanted("restart") {
        eprintln!("== restart: {} unfinished jobs", sizes.restart);
        rows.extend(bench.restart(sizes.restart, args.slow_runs, &mut notes)?);
    }
    if wanted("scan") {
        let n = sizes.scan_folders * sizes.scan_files_per_folder;
        eprintln!("== scan: {n} files in {} folders", sizes.scan_folders);
        rows.extend(bench.scan(
            sizes.scan_folders,
            sizes.scan_files_per_folder,
            args.runs,
            &mut notes,
        )?);
    }

    if wanted("overview") {
        let (manifests, per) = sizes.overview;
        eprintln!(
            "== overview: the dashboard with {} jobs in {manifests} active manifests",
            manifests * per
        );
        rows.extend(bench.overview(manifests, per, &mut notes)?);
    }

    if wanted("scrape") {
        eprintln!(
            "== scrape: /metrics with {:?} (runs, jobs per run)",
            sizes.scrape
        );
        rows.extend(bench.scrape(sizes.scrape, &mut notes)?);
    }
    if wanted("batch") {
        eprintln!("== batch: {} URL images in batches", sizes.batch);
        rows.extend(bench.batch(sizes.batch, &mut notes)?);
    }
    if wanted("webhooks") {
        eprintln!(
            "== webhooks: {} URL images, webhooks partly lost",
            sizes.api
        );
        rows.extend(bench.webhooks(sizes.api, &mut notes)?);
    }
    if wanted("batchhooks") {
        eprintln!(
            "== batchhooks: {} URL images, batches and webhooks",
            sizes.batch
        );
        rows.extend(bench.batch_webhooks(sizes.batch, &mut notes)?);
    }
    if wanted("smalldrop") {
        eprintln!("== smalldrop: 60 URL images, single mode");
        rows.extend(bench.small_drop(60, &mut notes)?);
    }
    if wanted("billing") {
        eprintln!(
            "== billing: {} URL images, 3% of submit answers lost",
            sizes.api
        );
        rows.extend(bench.billing(sizes.api, &mut notes)?);
    }

    if wanted("storage") {
        eprintln!(
            "== storage: {} local files through the upload endpoint, then staged and batched, then bucket to bucket",
            sizes.storage
        );
        rows.extend(bench.storage(sizes.storage, &mut notes)?);
    }

    print_report(&args, &rows, &notes)?;
    Ok(())
}

fn print_report(args: &Args, rows: &[Row], notes: &Notes) -> Result<()> {
    let mut out = String::new();
    let mut cmd = String::from("cargo run --release --example bench --");
    for a in std::env::args().skip(1) {
        cmd.push(' ');
        cmd.push_str(&a);
    }
    writeln!(out)?;
    writeln!(out, "Machine: {}", machine())?;
    writeln!(
        out,
        "Load average at the end: {} (1, 5, 15 min; other processes share the CPUs: the daemon competes for them)",
        loadavg()
    )?;
    writeln!(out, "Command: `{cmd}`")?;
    writeln!(
        out,
        "Counts: {}; figures are medians of {} run(s) (fast rows) / {} run(s) (slow rows).",
        if args.quick {
            "QUICK (scaled down, not the issue's counts)"
        } else {
            "full (the issue's counts)"
        },
        args.runs,
        args.slow_runs
    )?;
    writeln!(out)?;
    writeln!(out, "| figure | scenario | measured | target | met |")?;
    writeln!(out, "|---|---|---|---|---|")?;
    for r in rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            r.figure, r.scenario, r.measured, r.target, met
        )?;
    }
    if !notes.0.is_empty() {
        writeln!(out)?;
        writeln!(out, "Notes:")?;
        for n in &notes.0 {
            writeln!(out, "- {n}")?;
        }
    }
    print!("{out}");
    Ok(())
}

/// Shared setup: the daemon binary and the clock tick.
struct Bench {
    /// Limits so high that the daemon's limiter never waits.
    unlimited: Knobs,
    daemon: PathBuf,
    keep: bool,
    clk_tck: f64,
    /// Extra environment of every daemon run (`--unit-env`).
    env: Vec<(String, String)>,
}

/// Client-side knobs written to the daemon's config.
struct Knobs {
    rps: u32,
    rpm: u32,
    max_in_flight: usize,
}

/// The rate-limit scenario's client settings: Claid's defaults, the rest of the config default.
const CLAID_DEFAULT: Knobs = Knobs {
    rps: 4,
    rpm: 120,
    max_in_flight: 32,
};

/// What one daemon process did.
struct DaemonRun {
    wall: Duration,
    /// utime + stime of the daemon (from `cutime/cstime` of this process after the wait).
    cpu: Duration,
    /// utime + stime of this process (the emulator) over the same span.
    bench_cpu: Duration,
    /// Highest VmHWM sampled, in KiB.
    hwm_kib: u64,
    /// When the sampled VmHWM last rose, from the start.
    hwm_at: Duration,
    status: Option<ExitStatus>,
}

/// The `Environment=KEY=VALUE` lines of the systemd unit, except `RUST_LOG`.
fn unit_env() -> Result<Vec<(String, String)>> {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/claid-hotfolder.service");
    let text =
        fs::read_to_string(&unit).with_context(|| format!("cannot read {}", unit.display()))?;
    Ok(text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Environment="))
        .filter_map(|pair| pair.split_once('='))
        .filter(|(key, _)| *key != "RUST_LOG")
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect())
}

impl Bench {
    /// The bench for another binary (`--baseline`).
    fn with_daemon(args: &Args, daemon: PathBuf) -> Result<Bench> {
        let mut bench = Bench::new(args)?;
        if !daemon.is_file() {
            bail!("baseline binary {} not found", daemon.display());
        }
        bench.daemon = daemon;
        Ok(bench)
    }

    fn new(args: &Args) -> Result<Bench> {
        let daemon = match &args.daemon {
            Some(p) => p.clone(),
            None => {
                // target/release/examples/bench → target/release/claid-hotfolder
                let exe = std::env::current_exe().context("cannot find this example's path")?;
                let release = exe
                    .parent()
                    .and_then(Path::parent)
                    .context("unexpected example path")?;
                release.join("claid-hotfolder")
            }
        };
        if !daemon.is_file() {
            bail!(
                "daemon binary {} not found: run `cargo build --release` first",
                daemon.display()
            );
        }
        let clk_tck = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .unwrap_or(100.0);
        eprintln!("daemon: {}", daemon.display());
        let env = if args.unit_env {
            unit_env()?
        } else {
            Vec::new()
        };
        if !env.is_empty() {
            eprintln!("daemon environment from the systemd unit: {env:?}");
        }
        Ok(Bench {
            unlimited: Knobs {
                rps: 100_000,
                rpm: 6_000_000,
                max_in_flight: args.max_in_flight,
            },
            daemon,
            keep: args.keep,
            clk_tck,
            env,
        })
    }

    fn workdir(&self) -> Result<Work> {
        let dir = tempfile::Builder::new().prefix("claid-bench-").tempdir()?;
        let work = Work::new(dir, self.keep)?;
        Ok(work)
    }

    /// Spawns the daemon on `work`'s config.
    fn spawn(&self, work: &Work, log_name: &str) -> Result<Child> {
        let log = fs::File::create(work.root().join(log_name))?;
        let child = Command::new(&self.daemon)
            .args(["run", "--once", "--config"])
            .arg(&work.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env_remove("CLAID_API_KEY")
            .env_remove("CLAID_HOTFOLDER_CONFIG")
            .env_remove("JOURNAL_STREAM")
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .spawn()
            .with_context(|| format!("cannot start {}", self.daemon.display()))?;
        Ok(child)
    }

    /// Runs the daemon to completion, sampling its memory.
    fn run_daemon(&self, work: &Work) -> Result<DaemonRun> {
        let children0 = self.children_cpu()?;
        let self0 = self.self_cpu()?;
        eprintln!("  load average before the run: {}", loadavg());
        let t0 = Instant::now();
        let mut child = self.spawn(work, "daemon.log")?;
        let pid = child.id();
        let mut hwm_kib = 0;
        let mut hwm_at = Duration::ZERO;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if let Some(kib) = vm_hwm_kib(pid)
                && kib > hwm_kib
            {
                hwm_kib = kib;
                hwm_at = t0.elapsed();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let wall = t0.elapsed();
        eprintln!("  load average after the run: {}", loadavg());
        let cpu = self.children_cpu()?.saturating_sub(children0);
        let bench_cpu = self.self_cpu()?.saturating_sub(self0);
        if !status.success() {
            eprintln!(
                "  daemon exited with {status}; log: {}",
                work.root().join("daemon.log").display()
            );
        }
        Ok(DaemonRun {
            wall,
            cpu,
            bench_cpu,
            hwm_kib,
            hwm_at,
            status: Some(status),
        })
    }

    fn ticks(&self, t: u64) -> Duration {
        Duration::from_secs_f64(t as f64 / self.clk_tck)
    }

    /// utime + stime of waited-for children (cutime + cstime of this process).
    fn children_cpu(&self) -> Result<Duration> {
        let f = stat_fields("/proc/self/stat")?;
        Ok(self.ticks(f.cutime + f.cstime))
    }

    /// utime + stime of this process (the in-process emulator and the sampler).
    fn self_cpu(&self) -> Result<Duration> {
        let f = stat_fields("/proc/self/stat")?;
        Ok(self.ticks(f.utime + f.stime))
    }

    // ---- row 1 -------------------------------------------------------------------------

    fn throughput(&self, n: usize, runs: usize, notes: &mut Notes) -> Result<Vec<Row>> {
        let mut rate = Vec::new();
        let mut cpu_ms = Vec::new();
        let mut emu_ms = Vec::new();
        let mut steady = Vec::new();
        for run in 0..runs.max(1) {
            let emu = Emu::start(
                Scenario::default()
                    .latency(Latency::Fixed(Duration::ZERO))
                    .seed(1),
                2,
            )?;
            let work = self.workdir()?;
            work.write_config(&emu.base_url(), &self.unlimited)?;
            work.write_manifest("bulk.yaml", "t", n)?;
            let r = self.run_daemon(&work)?;
            let stats = emu.stats();
            let (outputs, span) = outbox_span(&work.outbox)?;
            let ips = n as f64 / r.wall.as_secs_f64();
            rate.push(ips);
            cpu_ms.push(r.cpu.as_secs_f64() * 1000.0 / n as f64);
            emu_ms.push(r.bench_cpu.as_secs_f64() * 1000.0 / n as f64);
            if let Some(span) = span.filter(|s| !s.is_zero()) {
                steady.push(outputs as f64 / span.as_secs_f64());
            }
            notes.add(format!(
                "throughput run {}: {} images in {:.1} s = {:.0} images/s (first→last output: {}); daemon CPU {:.0} ms ({:.2} ms/image), emulator+bench CPU {:.0} ms; {} outputs; exit {}; {}",
                run + 1,
                n,
                r.wall.as_secs_f64(),
                ips,
                span.map(|s| format!("{:.0} images/s", outputs as f64 / s.as_secs_f64().max(1e-9)))
                    .unwrap_or_else(|| "-".into()),
                r.cpu.as_secs_f64() * 1000.0,
                r.cpu.as_secs_f64() * 1000.0 / n as f64,
                r.bench_cpu.as_secs_f64() * 1000.0,
                outputs,
                exit_text(r.status),
                stats_text(&stats),
            ));
            notes.add(format!(
                "throughput run {}: daemon peak RSS {:.1} MB",
                run + 1,
                r.hwm_kib as f64 / 1024.0
            ));
            work.finish(notes);
        }
        let ips = median(&rate);
        let cpu = median(&cpu_ms);
        let emu = median(&emu_ms);
        Ok(vec![Row {
            figure: "images/s, daemon CPU ms per image",
            scenario: format!(
                "{n} images 64×48, latency 0, no rate limit, fsync on, max_in_flight {}",
                self.unlimited.max_in_flight
            ),
            measured: format!(
                "{ips:.0} images/s; daemon {cpu:.2} ms CPU/image, emulator {emu:.2} ms CPU/image{}",
                if steady.is_empty() {
                    String::new()
                } else {
                    format!(" (steady state {:.0} images/s)", median(&steady))
                }
            ),
            target: "the emulator, not the daemon, saturates; ≥ 300 images/s on 2 cores",
            met: Some(ips >= 300.0 && emu >= cpu),
        }])
    }

    // ---- rows 2 and 3 ------------------------------------------------------------------

    fn ratelimit(&self, n: usize, runs: usize, notes: &mut Notes) -> Result<Vec<Row>> {
        let mut shares = Vec::new();
        let mut limited = Vec::new();
        let mut calls = Vec::new();
        for run in 0..runs.max(1) {
            let scenario = Scenario::default()
                .latency(Latency::LogNormal {
                    median: Duration::from_secs(3),
                    sigma: 0.5,
                })
                .rps(4)
                .rpm(120)
                .seed(2);
            let emu = Emu::start(scenario, 0)?;
            let work = self.workdir()?;
            work.write_config(&emu.base_url(), &CLAID_DEFAULT)?;
            work.write_manifest("limited.yaml", "r", n)?;
            let r = self.run_daemon(&work)?;
            let stats = emu.stats();
            // Ideal: 120 requests/min, 2 calls per image → 60 images/min.
            let ideal = Duration::from_secs_f64(n as f64 / 60.0 * 60.0);
            let share = ideal.as_secs_f64() / r.wall.as_secs_f64();
            let per_image = (stats.submits + stats.polls + stats.uploads) as f64 / n as f64;
            shares.push(share);
            limited.push(stats.rate_limited as f64);
            calls.push(per_image);
            let polls: Vec<u64> = stats.polls_by_task.values().copied().collect();
            notes.add(format!(
                "ratelimit run {}: {} images in {:.1} s (ideal {:.1} s) = {:.1}% of the bound; {} requests = {:.2}/image; polls per task max {}; exit {}; {}",
                run + 1,
                n,
                r.wall.as_secs_f64(),
                ideal.as_secs_f64(),
                share * 100.0,
                stats.requests,
                stats.requests as f64 / n as f64,
                polls.iter().max().copied().unwrap_or(0),
                exit_text(r.status),
                stats_text(&stats),
            ));
            work.finish(notes);
        }
        let scenario = format!(
            "{n} images, emulator and client 4 rps / 120 rpm, latency lognormal (median 3 s, σ 0.5), max_in_flight 32, poll min 1 s / max 30 s"
        );
        let share = median(&shares);
        let l = median(&limited);
        let c = median(&calls);
        Ok(vec![
            Row {
                figure: "share of the rate-limit bound, 429s",
                scenario: scenario.clone(),
                measured: format!("{:.1}% of 60 images/min; {l:.0} × 429", share * 100.0),
                target: "≥ 95%, zero 429s",
                met: Some(share >= 0.95 && l == 0.0),
            },
            Row {
                figure: "API calls per image (submits + polls + uploads)",
                scenario: "same".into(),
                measured: format!("{c:.2}"),
                target: "≤ 2.2",
                met: Some(c <= 2.2),
            },
        ])
    }

    // ---- row 4 -------------------------------------------------------------------------

    fn delay(&self, n: usize, runs: usize, notes: &mut Notes) -> Result<Vec<Row>> {
        let mut p50s = Vec::new();
        let mut p99s = Vec::new();
        let latency = Latency::LogNormal {
            median: Duration::from_secs(3),
            sigma: 0.5,
        };
        for run in 0..runs.max(1) {
            let seed = 3 + run as u64;
            // One emulator thread: task ids and latency draws happen in the same order, so the
            // latency of task k is the k-th draw of the seeded RNG (replayed below).
            let emu = Emu::start(Scenario::default().latency(latency).seed(seed), 0)?;
            let work = self.workdir()?;
            work.write_config(&emu.base_url(), &self.unlimited)?;
            work.write_manifest("delay.yaml", "d", n)?;
            let r = self.run_daemon(&work)?;
            let stats = emu.stats();
            let delays = done_to_outbox(&work, &emu.base_url(), latency, seed, stats.submits)?;
            // Jobs in manifest order ≈ submit order: does the delay drift during the run?
            let quarter = delays.len() / 4;
            let drift = (quarter > 0).then(|| {
                (
                    median(&delays[..quarter]),
                    median(&delays[delays.len() - quarter..]),
                )
            });
            let mut d = delays;
            d.sort_by(f64::total_cmp);
            // A wrong task → latency mapping would show as files written before their task was DONE.
            let negative = d.iter().filter(|x| **x < 0.0).count();
            let (p50, p99) = (quantile(&d, 0.5), quantile(&d, 0.99));
            notes.add(format!(
                "delay run {}: {} delays ({} negative: the DONE reconstruction check), p50 {:.3} s, p99 {:.3} s, min {:.3} s, max {:.3} s; median of the first / last quarter of jobs {}; wall {:.1} s; {} polls = {:.2}/image; exit {}",
                run + 1,
                d.len(),
                negative,
                p50,
                p99,
                d.first().copied().unwrap_or(f64::NAN),
                d.last().copied().unwrap_or(f64::NAN),
                drift.map_or_else(|| "-".to_owned(), |(a, b)| format!("{a:.3} s / {b:.3} s")),
                r.wall.as_secs_f64(),
                stats.polls,
                stats.polls as f64 / n as f64,
                exit_text(r.status),
            ));
            p50s.push(p50);
            p99s.push(p99);
            work.finish(notes);
        }
        let (p50, p99) = (median(&p50s), median(&p99s));
        Ok(vec![Row {
            figure: "delay from task DONE to file in outbox, p50 / p99",
            scenario: format!(
                "{n} images, latency lognormal (median 3 s, σ 0.5), no rate limit, max_in_flight {}, poll min 1 s",
                self.unlimited.max_in_flight
            ),
            measured: format!("{p50:.2} s / {p99:.2} s"),
            target: "≤ 1 s / ≤ 3 s",
            met: Some(p50 <= 1.0 && p99 <= 3.0),
        }])
    }

    // ---- row 5 -------------------------------------------------------------------------

    fn rss(&self, sizes: [usize; 2], runs: usize, notes: &mut Notes) -> Result<Vec<Row>> {
        let mut peaks = Vec::new();
        for &n in &sizes {
            let mb = self.peak_rss_runs("rss", n, runs, notes, |work| {
                work.write_manifest("big.yaml", "m", n)
            })?;
            peaks.push((n, median(&mb)));
        }
        let (small_n, small) = peaks[0];
        let (big_n, big) = peaks[1];
        let ratio = big / small.max(1e-9);
        Ok(vec![Row {
            figure: "peak RSS of the daemon (VmHWM)",
            scenario: format!(
                "one manifest of {big_n} images (and {small_n}), processed to the end"
            ),
            measured: format!(
                "{big:.1} MB ({small:.1} MB at {small_n}: ×{ratio:.2} for ×{} images)",
                big_n / small_n.max(1)
            ),
            target: "≤ 100 MB, flat in the number of images",
            met: Some(big <= 100.0 && ratio <= 1.5),
        }])
    }

    /// Peak RSS of a manifest whose every image has operations of its own (no two alike),
    /// processed to the end: the validated rows hold a body each until registered.
    fn rss_rows(&self, n: usize, runs: usize, notes: &mut Notes) -> Result<Vec<Row>> {
        let mb = self.peak_rss_runs("rss-rows", n, runs, notes, |work| {
            work.write_manifest_own_operations("rows.yaml", "r", n)
        })?;
        let peak = median(&mb);
        Ok(vec![Row {
            figure: "peak RSS of the daemon (VmHWM), per-image operations",
            scenario: format!("one manifest of {n} images, each with its own `operations`"),
            measured: format!("{peak:.1} MB"),
            target: "≤ 100 MB",
            met: Some(peak <= 100.0),
        }])
    }

    /// `runs` runs of the daemon on a manifest of `n` images that `write_manifest` puts in
    /// a fresh tree, unlimited, to the end; the peak RSS (MB) of each, each noted under `label`.
    fn peak_rss_runs(
        &self,
        label: &str,
        n: usize,
        runs: usize,
        notes: &mut Notes,
        write_manifest: impl Fn(&Work) -> Result<()>,
    ) -> Result<Vec<f64>> {
        let mut mb = Vec::new();
        for run in 0..runs.max(1) {
            let emu = rss_emulator()?;
            let work = self.workdir()?;
            work.write_config(&emu.base_url(), &self.unlimited)?;
            write_manifest(&work)?;
            let r = self.run_daemon(&work)?;
            let peak = r.hwm_kib as f64 / 1024.0;
            notes.add(format!(
                "{label} {} images run {}: peak RSS {:.1} MB, reached {:.0} s in; wall {:.1} s ({:.0} images/s); daemon CPU {:.2} ms/image; exit {}; {}",
                n,
                run + 1,
                peak,
                r.hwm_at.as_secs_f64(),
                r.wall.as_secs_f64(),
                n as f64 / r.wall.as_secs_f64(),
                r.cpu.as_secs_f64() * 1000.0 / n as f64,
                exit_text(r.status),
                stats_text(&emu.stats())
            ));
            mb.push(peak);
            work.finish(notes);
        }
        Ok(mb)
    }

    // ---- row 6 -------------------------------------------------------------------------

    fn restart(&self, n: usize, runs: usize, notes: &mut Notes) -> Result<Vec<Row>> {
        let mut firsts = Vec::new();
        for run in 0..runs.max(1) {
            // Nothing finishes: every job stays unfinished in the store.
            let scenario = Scenario::default()
                .latency(Latency::Fixed(Duration::from_secs(3600)))
                .seed(6);
            let emu = Emu::start(scenario, 1)?;
            let work = self.workdir()?;
            work.write_config(&emu.base_url(), &self.unlimited)?;
            work.write_manifest("pending.yaml", "p", n)?;

            // First life: register the manifest, submit up to max_in_flight, then die.
            let mut child = self.spawn(&work, "daemon-1.log")?;
            let t0 = Instant::now();
            let want = self.unlimited.max_in_flight.min(n) as u64;
            let mut hwm1 = 0;
            let registered = loop {
                if let Some(kib) = vm_hwm_kib(child.id()) {
                    hwm1 = hwm1.max(kib);
                }
                if emu.stats().submits >= want {
                    break true;
                }
                if child.try_wait()?.is_some() || t0.elapsed() > Duration::from_secs(600) {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let until_submits = t0.elapsed();
            // Let a few of the in-flight submits' records land, then SIGKILL.
            std::thread::sleep(Duration::from_millis(500));
            child.kill().ok();
            child.wait()?;
            if !registered {
                notes.add(format!(
                    "restart run {}: the first daemon never reached {want} submits (log: daemon-1.log)",
                    run + 1
                ));
                work.finish(notes);
                continue;
            }
            let before = emu.stats();

            // Second life: time from spawn to the emulator's first new request.
            let t1 = Instant::now();
            let mut child = self.spawn(&work, "daemon-2.log")?;
            let first = loop {
                let s = emu.stats();
                if s.requests > before.requests {
                    break Some(t1.elapsed());
                }
                if child.try_wait()?.is_some() || t1.elapsed() > Duration::from_secs(120) {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(1));
            };
            // Peak RSS of the second life while it resumes (a few seconds more).
            let mut hwm = 0;
            let t2 = Instant::now();
            while t2.elapsed() < Duration::from_secs(5) && child.try_wait()?.is_none() {
                if let Some(kib) = vm_hwm_kib(child.id()) {
                    hwm = hwm.max(kib);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            child.kill().ok();
            child.wait()?;
            let resumed = grep_line(&work.root().join("daemon-2.log"), "Resumed")
                .and_then(|l| {
                    l.split_once("manifests=")
                        .map(|(_, r)| format!("manifests={r}"))
                })
                .unwrap_or_default();
            notes.add(format!(
                "restart run {}: {} jobs registered and {} submitted after {:.1} s (peak RSS {:.1} MB), killed; restart → first request {}; peak RSS in the 5 s after it {:.1} MB; resume log: {}",
                run + 1,
                n,
                before.submits,
                until_submits.as_secs_f64(),
                hwm1 as f64 / 1024.0,
                first.map(|d| format!("{:.3} s", d.as_secs_f64())).unwrap_or_else(|| "never (120 s)".into()),
                hwm as f64 / 1024.0,
                resumed.trim()
            ));
            if let Some(d) = first {
                firsts.push(d.as_secs_f64());
            } else {
                firsts.push(f64::INFINITY);
            }
            work.finish(notes);
        }
        let t = median(&firsts);
        Ok(vec![Row {
            figure: "time to the first request after restart",
            scenario: format!(
                "{n} unfinished jobs in the store (SIGKILL after the first submits; latency 1 h)"
            ),
            measured: format!("{t:.2} s"),
            target: "≤ 2 s",
            met: Some(t <= 2.0),
        }])
    }

    // ---- row 8: the dashboard's overview (issue 14) ------------------------------------

    /// Registers `manifests` manifests of `per` images each through the real daemon (nothing
    /// finishes: latency 1 h), then times `GET /` of its dashboard: the overview page with
    /// every active manifest, as a browser asks for it.
    fn overview(&self, manifests: usize, per: usize, notes: &mut Notes) -> Result<Vec<Row>> {
        const WARMUP: usize = 5;
        const SAMPLES: usize = 101;
        let scenario = Scenario::default()
            .latency(Latency::Fixed(Duration::from_secs(3600)))
            .seed(8);
        let emu = Emu::start(scenario, 1)?;
        let work = self.workdir()?;
        work.write_config(&emu.base_url(), &CLAID_DEFAULT)?;
        let mut config = fs::read_to_string(&work.config)?;
        config.push_str("web:\n  listen: 127.0.0.1:0\n");
        fs::write(&work.config, config)?;
        for m in 0..manifests {
            work.write_manifest(&format!("m{m:03}.yaml"), &format!("m{m:03}-"), per)?;
        }
        let mut child = self.spawn(&work, "daemon.log")?;
        let log = work.root().join("daemon.log");
        let t0 = Instant::now();
        let registered = loop {
            let text = fs::read_to_string(&log).unwrap_or_default();
            if text.matches("Manifest accepted").count() >= manifests {
                break true;
            }
            if child.try_wait()?.is_some() || t0.elapsed() > Duration::from_secs(3600) {
                break false;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        let registration = t0.elapsed();
        let addr = grep_line(&log, "Dashboard listening").and_then(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("addr=").map(str::to_owned))
        });
        let (Some(addr), true) = (addr, registered) else {
            child.kill().ok();
            child.wait()?;
            notes.add("overview: the daemon did not register every manifest (log: daemon.log)");
            work.finish(notes);
            return Ok(Vec::new());
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = reqwest::Client::new();
        let url = format!("http://{addr}/");
        let mut times = Vec::with_capacity(SAMPLES);
        let mut bytes = 0;
        let mut listed = 0;
        for i in 0..WARMUP + SAMPLES {
            let started = Instant::now();
            let body = rt.block_on(async {
                let res = client.get(&url).send().await?.error_for_status()?;
                res.text().await
            })?;
            let took = started.elapsed();
            if i >= WARMUP {
                times.push(took.as_secs_f64() * 1000.0);
            }
            bytes = body.len();
            listed = body.matches("<progress ").count();
        }
        let hwm = vm_hwm_kib(child.id()).unwrap_or(0);
        child.kill().ok();
        child.wait()?;
        times.sort_by(f64::total_cmp);
        let p50 = median(&times);
        let p90 = quantile(&times, 0.9);
        let jobs = manifests * per;
        notes.add(format!(
            "overview: {jobs} jobs in {manifests} manifests registered in {:.0} s; the page lists {listed} active manifests ({:.0} kB of HTML); {SAMPLES} sequential GET / after {WARMUP} to warm up: p50 {p50:.1} ms, p90 {p90:.1} ms, max {:.1} ms; daemon peak RSS {:.1} MB",
            registration.as_secs_f64(),
            bytes as f64 / 1000.0,
            times.last().copied().unwrap_or(0.0),
            hwm as f64 / 1024.0
        ));
        work.finish(notes);
        Ok(vec![Row {
            figure: "dashboard overview, median answer",
            scenario: format!(
                "{jobs} jobs in the store, {manifests} active manifests (latency 1 h: nothing finishes), `GET /` with every manifest's row"
            ),
            measured: format!("{p50:.1} ms (p90 {p90:.1} ms)"),
            target: "< 50 ms",
            met: Some(p50 < 50.0 && listed == manifests),
        }])
    }

    // ---- row 7 -------------------------------------------------------------------------

    fn scan(
        &self,
        folders: usize,
        per_folder: usize,
        runs: usize,
        notes: &mut Notes,
    ) -> Result<Vec<Row>> {
        let work = self.workdir()?;
        let inbox = work.inbox.clone();
        let mut manifests = 0;
        for f in 0..folders {
            let dir = inbox
                .join(format!("dept-{:02}", f % 20))
                .join(format!("folder-{f:04}"));
            fs::create_dir_all(&dir)?;
            for i in 0..per_folder {
                if i == 0 && f % 10 == 0 {
                    fs::write(
                        dir.join("drop.yaml"),
                        "images:\n  - input: storage://demo/s-64x48.png\n",
                    )?;
                    manifests += 1;
                } else {
                    fs::write(dir.join(format!("IMG_{i:04}.jpg")), b"placeholder")?;
                }
            }
        }
        let total = folders * per_folder;
        let watch = WatchConfig {
            settle: Duration::from_millis(100),
            rescan: Duration::from_secs(1),
            poll_only: false,
        };
        // Files must look stable at first sight, as in a real inbox; the settle wait is not timed.
        std::thread::sleep(Duration::from_millis(300));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let mut times = Vec::new();
        for run in 0..runs.max(1) {
            let t0 = Instant::now();
            let found = rt.block_on(claid_hotfolder::watcher::scan_stable(&inbox, &watch))?;
            let took = t0.elapsed();
            notes.add(format!(
                "scan run {}: {} files ({} manifests) in {} folders: {:.3} s, {} candidates (page cache warm)",
                run + 1,
                total,
                manifests,
                folders,
                took.as_secs_f64(),
                found.len()
            ));
            times.push(took.as_secs_f64());
        }
        work.finish(notes);
        let t = median(&times);
        Ok(vec![Row {
            figure: "time for the first scan",
            scenario: format!(
                "inbox of {total} files ({manifests} manifests) in {folders} folders, `watcher::scan_stable`"
            ),
            measured: format!("{t:.2} s"),
            target: "≤ 5 s",
            met: Some(t <= 5.0),
        }])
    }
}

/// For every done job: output file mtime − (task created_at + its replayed latency), in seconds.
fn done_to_outbox(
    work: &Work,
    base_url: &str,
    latency: Latency,
    seed: u64,
    submits: u64,
) -> Result<Vec<f64>> {
    // Task k (ids from 1) drew the k-th latency of the seeded RNG (no other scenario draws:
    // no faults, no error share).
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let latencies: Vec<Duration> = (0..submits).map(|_| latency.sample(&mut rng)).collect();

    let mut jobs = Vec::new();
    for entry in fs::read_dir(&work.outbox)? {
        let path = entry?.path();
        if path.to_string_lossy().ends_with(".report.json") {
            let report: serde_json::Value = serde_json::from_slice(&fs::read(&path)?)?;
            for row in report["jobs"].as_array().into_iter().flatten() {
                if let (Some(task), Some(out)) = (row["task_id"].as_u64(), row["output"].as_str()) {
                    if row["status"] == "done" {
                        jobs.push((task, work.outbox.join(out)));
                    }
                }
            }
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = reqwest::Client::new();
    let created: Vec<Option<SystemTime>> = rt.block_on(async {
        use futures_util::StreamExt;
        futures_util::stream::iter(jobs.iter().map(|(task, _)| {
            let client = client.clone();
            let url = format!("{base_url}/image/edit/async/{task}");
            async move {
                let resp = client.get(url).bearer_auth("bench-key").send().await.ok()?;
                let v: serde_json::Value = resp.json().await.ok()?;
                humantime::parse_rfc3339_weak(v["data"]["created_at"].as_str()?).ok()
            }
        }))
        .buffered(16)
        .collect()
        .await
    });
    let mut delays = Vec::new();
    for ((task, out), created) in jobs.iter().zip(created) {
        let (Some(created), Some(lat)) = (created, latencies.get((*task as usize).wrapping_sub(1)))
        else {
            continue;
        };
        let Ok(mtime) = fs::metadata(out).and_then(|m| m.modified()) else {
            continue;
        };
        let done = created + *lat;
        let d = match mtime.duration_since(done) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        };
        delays.push(d);
    }
    Ok(delays)
}

/// The emulator, served by its own runtime on its own thread (0 workers = current-thread).
struct Emu {
    handle: Option<emulator::Handle>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Emu {
    fn start(scenario: Scenario, workers: usize) -> Result<Emu> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("emulator".into())
            .spawn(move || {
                let rt = if workers == 0 {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                } else {
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(workers)
                        .enable_all()
                        .build()
                };
                let rt = match rt {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    match emulator::spawn(scenario).await {
                        Ok(handle) => {
                            let _ = tx.send(Ok(handle));
                            let _ = stop_rx.await;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                });
            })?;
        let handle = rx
            .recv()
            .context("emulator thread ended")?
            .context("cannot start the emulator")?;
        Ok(Emu {
            handle: Some(handle),
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    fn handle(&self) -> &emulator::Handle {
        self.handle.as_ref().expect("handle lives until drop")
    }

    fn base_url(&self) -> String {
        self.handle().base_url()
    }

    fn stats(&self) -> Stats {
        self.handle().stats()
    }
}

impl Drop for Emu {
    fn drop(&mut self) {
        drop(self.handle.take());
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A temporary tree: config, key, inbox, outbox, archive, rejected, state.
struct Work {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    config: PathBuf,
    inbox: PathBuf,
    outbox: PathBuf,
}

impl Work {
    fn new(dir: tempfile::TempDir, keep: bool) -> Result<Work> {
        let root = dir.path().to_owned();
        let inbox = root.join("inbox");
        let outbox = root.join("outbox");
        for d in ["inbox", "outbox", "archive", "rejected", "state"] {
            fs::create_dir_all(root.join(d))?;
        }
        fs::write(root.join("api-key"), "bench-key\n")?;
        let dir = if keep {
            let _ = dir.keep();
            None
        } else {
            Some(dir)
        };
        Ok(Work {
            dir,
            config: root.join("config.yaml"),
            root,
            inbox,
            outbox,
        })
    }

    fn root(&self) -> &Path {
        &self.root
    }

    fn write_config(&self, base_url: &str, k: &Knobs) -> Result<()> {
        let r = self.root.display();
        let yaml = format!(
            "api:
  base_url: \"{base_url}\"
  api_key_file: \"{r}/api-key\"
  requests_per_second: {rps}
  requests_per_minute: {rpm}
  max_in_flight: {mif}
folders:
  inbox: \"{r}/inbox\"
  outbox: \"{r}/outbox\"
  archive: \"{r}/archive\"
  rejected: \"{r}/rejected\"
  state: \"{r}/state\"
watch: {{ settle: 100ms, rescan: 1s }}
admin:
  socket: \"{r}/admin.sock\"
",
            rps = k.rps,
            rpm = k.rpm,
            mif = k.max_in_flight,
        );
        fs::write(&self.config, yaml)?;
        Ok(())
    }

    /// A manifest of `n` small synthetic images, written under a hidden name then renamed.
    fn write_manifest(&self, name: &str, prefix: &str, n: usize) -> Result<()> {
        let mut s = String::with_capacity(n * 48 + 128);
        s.push_str("operations: { resizing: { width: 32 } }\noutput: { format: png }\nimages:\n");
        for i in 0..n {
            writeln!(s, "  - input: storage://demo/{prefix}{i:06}-64x48.png")?;
        }
        let tmp = self.inbox.join(format!(".{name}.part"));
        fs::write(&tmp, s)?;
        fs::rename(&tmp, self.inbox.join(name))?;
        Ok(())
    }

    /// A manifest of `n` images each with operations of its own (no two alike).
    fn write_manifest_own_operations(&self, name: &str, prefix: &str, n: usize) -> Result<()> {
        let mut s = String::with_capacity(n * 110 + 64);
        s.push_str("output: { format: png }\nimages:\n");
        for i in 0..n {
            writeln!(
                s,
                "  - {{ input: storage://demo/{prefix}{i:06}-64x48.png, operations: {{ resizing: {{ width: {}, height: {} }} }} }}",
                16 + i % 48,
                16 + i / 48
            )?;
        }
        let tmp = self.inbox.join(format!(".{name}.part"));
        fs::write(&tmp, s)?;
        fs::rename(&tmp, self.inbox.join(name))?;
        Ok(())
    }

    /// Removes the tree (or says where it is kept).
    fn finish(self, notes: &mut Notes) {
        match self.dir {
            Some(dir) => drop(dir),
            None => notes.add(format!("kept {}", self.root.display())),
        }
    }
}

/// The emulator of the RSS rows: no latency, and results that expire quickly so that its own
/// memory stays small.
fn rss_emulator() -> Result<Emu> {
    let scenario = Scenario::default()
        .latency(Latency::Fixed(Duration::ZERO))
        .tmp_url_ttl(Duration::from_secs(60))
        .seed(5);
    Emu::start(scenario, 2)
}

/// Counts output images and the span between the first and the last one's mtime.
fn outbox_span(outbox: &Path) -> Result<(usize, Option<Duration>)> {
    let mut n = 0;
    let mut lo: Option<SystemTime> = None;
    let mut hi: Option<SystemTime> = None;
    let mut stack = vec![outbox.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let ft = entry.file_type()?;
            if ft.is_dir() {
                stack.push(entry.path());
            } else if entry.path().extension().is_some_and(|e| e == "png") {
                n += 1;
                let m = entry.metadata()?.modified()?;
                lo = Some(lo.map_or(m, |l| l.min(m)));
                hi = Some(hi.map_or(m, |h| h.max(m)));
            }
        }
    }
    let span = match (lo, hi) {
        (Some(l), Some(h)) => h.duration_since(l).ok(),
        _ => None,
    };
    Ok((n, span))
}

struct StatFields {
    utime: u64,
    stime: u64,
    cutime: u64,
    cstime: u64,
}

/// Fields 14–17 of a `/proc/<pid>/stat` file.
fn stat_fields(path: &str) -> Result<StatFields> {
    let text = fs::read_to_string(path)?;
    let after = text.rsplit_once(')').map(|(_, r)| r).context("bad stat")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    let num = |i: usize| -> Result<u64> { Ok(f.get(i).context("short stat")?.parse()?) };
    // After ")": index 0 is field 3 (state), so field k is index k - 3.
    Ok(StatFields {
        utime: num(11)?,
        stime: num(12)?,
        cutime: num(13)?,
        cstime: num(14)?,
    })
}

/// VmHWM of a live process, KiB.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn grep_line(path: &Path, needle: &str) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find(|l| l.contains(needle)).map(str::to_owned)
}

fn exit_text(status: Option<ExitStatus>) -> String {
    status
        .and_then(|s| s.code())
        .map_or_else(|| "killed".to_owned(), |c| c.to_string())
}

fn stats_text(s: &Stats) -> String {
    format!(
        "emulator: {} requests, {} submits ({} duplicate), {} polls, {} uploads, {} downloads, {} × 429, {} × 5xx, max {} concurrent",
        s.requests,
        s.submits,
        s.duplicate_submits,
        s.polls,
        s.uploads,
        s.downloads,
        s.rate_limited,
        s.errors_5xx,
        s.max_concurrent
    )
}

/// A small PNG (a gradient), for `http://` inputs.
fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([
            (x * 255 / width.max(1)) as u8,
            (y * 255 / height.max(1)) as u8,
            128,
        ])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    let _ = img.write_to(&mut out, image::ImageFormat::Png);
    out.into_inner()
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    quantile(&v, 0.5)
}

/// Nearest-rank quantile of sorted values; NaN when empty.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// `nproc`, CPU model and memory, from /proc.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map_or_else(
            || "? GiB".into(),
            |k| format!("{:.1} GiB", k / 1024.0 / 1024.0),
        );
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpus} CPUs (nproc), {model}, {mem} RAM, Linux {}",
        kernel.trim()
    )
}
