//! What the dashboard and the alerts read about the daemon over time, kept in memory by one
//! sampler task that looks once a second at the store's counts (O(runs active)) and the API
//! client's counters:
//!
//! - images finished (done + failed) per minute for the last 24 hours, and over the last
//!   60 seconds, so the overview shows throughput now, over the last hour, and a chart;
//! - API requests in the last 60 seconds (set against the client's rate limit);
//! - images done and failed today (UTC), counted as they finish;
//! - since when work has been pending without progress (for `stalled`);
//! - the outbox's disk: full (less than [`DISK_FULL_BELOW`] free) or not writable (a read-only
//!   filesystem, or no write permission), checked every [`DISK_EVERY`].
//!
//! Nothing of this is persisted: a restart starts every series afresh (the dashboard and the
//! docs say so), and "today" then counts from the start.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::claid::{ClientStats, Endpoint};
use crate::pipeline;
use crate::store::ManifestCounts;

/// How often the sampler looks.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How often the outbox's disk is checked.
pub const DISK_EVERY: Duration = Duration::from_secs(5);
/// Less free space than this on the outbox's filesystem counts as a full disk.
pub const DISK_FULL_BELOW: u64 = 16 * 1024 * 1024;
/// Minutes of per-minute history kept (24 hours).
pub const HISTORY_MINUTES: usize = 24 * 60;
/// Minutes the overview's chart shows at most (6 hours) and at least (half an hour): since the
/// start in between.
pub const CHART_MINUTES: usize = 6 * 60;
pub const CHART_MIN_MINUTES: usize = 30;
/// The window of "now".
const NOW_WINDOW: Duration = Duration::from_secs(60);
const MINUTE_MS: u64 = 60_000;
const DAY_MS: u64 = 24 * 60 * MINUTE_MS;

/// The outbox's disk, as the last check found it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Disk {
    #[default]
    Ok,
    /// Less than [`DISK_FULL_BELOW`] bytes free for the daemon's user.
    Full { free_bytes: u64 },
    /// The outbox cannot be written: `why` in words (read-only filesystem, permission denied).
    Unwritable { why: String },
}

impl Disk {
    /// A short stable name: `ok`, `disk-full`, `outbox-unwritable`.
    pub fn code(&self) -> &'static str {
        match self {
            Disk::Ok => "ok",
            Disk::Full { .. } => "disk-full",
            Disk::Unwritable { .. } => "outbox-unwritable",
        }
    }

    /// What is wrong, in words (empty when nothing is).
    pub fn describe(&self) -> String {
        match self {
            Disk::Ok => String::new(),
            Disk::Full { free_bytes } => format!(
                "the outbox's disk is full ({} free): outputs cannot be written",
                human_bytes(*free_bytes)
            ),
            Disk::Unwritable { why } => format!("the outbox cannot be written: {why}"),
        }
    }
}

/// What the dashboard shows, read in one lock.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Images finished per minute over the last 60 seconds (or since the start, if shorter).
    pub per_minute_now: f64,
    /// Images finished per minute over the last hour (or since the start, if shorter).
    pub per_minute_hour: f64,
    /// API requests (downloads of results excluded) in the last 60 seconds.
    pub requests_last_minute: u64,
    /// Jobs that ended done / failed since midnight UTC (or since the start, if later).
    pub done_today: u64,
    pub failed_today: u64,
    /// Images finished in each minute since the start (at least [`CHART_MIN_MINUTES`], at most
    /// [`CHART_MINUTES`]), oldest first, as (minute start in ms since the epoch, images).
    pub chart: Vec<(u64, u64)>,
    /// When the series began (ms since the epoch): the daemon's start.
    pub since_ms: u64,
    pub disk: Disk,
    /// How long work has been pending (queued or at Claid) without any job changing state;
    /// `None` when nothing is pending.
    pub idle_for: Option<Duration>,
}

/// The series and counters; updated by [`State::sample`], read by [`State::snapshot`].
#[derive(Debug)]
pub struct State {
    since_ms: u64,
    started: Instant,
    /// The previous sample's totals and request count (deltas are taken against them).
    last: Option<(ManifestCounts, u64)>,
    /// Cumulative finished images and requests at each sample of the last [`NOW_WINDOW`].
    recent: VecDeque<(Instant, u64, u64)>,
    finished_total: u64,
    requests_total: u64,
    /// Per-minute finished images, oldest first: (minute start ms, images).
    minutes: VecDeque<(u64, u64)>,
    /// The UTC day (days since the epoch) `done_today` and `failed_today` count.
    day: u64,
    done_today: u64,
    failed_today: u64,
    /// Since when work has been pending with no job changing state.
    idle_since: Option<Instant>,
    disk: Disk,
}

impl State {
    pub fn new(now: Instant, wall_ms: u64) -> State {
        State {
            since_ms: wall_ms,
            started: now,
            last: None,
            recent: VecDeque::new(),
            finished_total: 0,
            requests_total: 0,
            minutes: VecDeque::new(),
            day: wall_ms / DAY_MS,
            done_today: 0,
            failed_today: 0,
            idle_since: None,
            disk: Disk::Ok,
        }
    }

    /// Takes one sample: the store's totals and the client's request count at `now`.
    pub fn sample(&mut self, totals: &ManifestCounts, requests: u64, now: Instant, wall_ms: u64) {
        let (done_delta, failed_delta, request_delta, changed) = match &self.last {
            // The first sample is the baseline: what finished before the start is not "now".
            None => (0, 0, 0, false),
            Some((before, requests_before)) => (
                totals.done.saturating_sub(before.done),
                totals.failed.saturating_sub(before.failed),
                requests.saturating_sub(*requests_before),
                before != totals,
            ),
        };
        self.last = Some((*totals, requests));
        let finished = done_delta + failed_delta;
        self.finished_total += finished;
        self.requests_total += request_delta;

        self.recent
            .push_back((now, self.finished_total, self.requests_total));
        while self
            .recent
            .front()
            .is_some_and(|(at, _, _)| now.duration_since(*at) > NOW_WINDOW)
        {
            self.recent.pop_front();
        }

        let minute = wall_ms - wall_ms % MINUTE_MS;
        match self.minutes.back_mut() {
            Some((start, images)) if *start == minute => *images += finished,
            _ => self.minutes.push_back((minute, finished)),
        }
        while self.minutes.len() > HISTORY_MINUTES {
            self.minutes.pop_front();
        }

        let day = wall_ms / DAY_MS;
        if day != self.day {
            self.day = day;
            self.done_today = 0;
            self.failed_today = 0;
        }
        self.done_today += done_delta;
        self.failed_today += failed_delta;

        let pending = totals.open() > 0;
        self.idle_since = match (pending, changed, self.idle_since) {
            (false, _, _) => None,
            (true, true, _) | (true, false, None) => Some(now),
            (true, false, Some(since)) => Some(since),
        };
    }

    /// The sampler has stopped (shutdown): nothing is known to be idle any more.
    pub fn stop(&mut self) {
        self.idle_since = None;
    }

    pub fn set_disk(&mut self, disk: Disk) {
        self.disk = disk;
    }

    pub fn snapshot(&self, now: Instant, wall_ms: u64) -> Snapshot {
        let per_minute_now = match (self.recent.front(), self.recent.back()) {
            (Some((t0, f0, _)), Some((t1, f1, _))) if t1 > t0 => {
                (f1 - f0) as f64 / t1.duration_since(*t0).as_secs_f64() * 60.0
            }
            _ => 0.0,
        };
        let requests_last_minute = match (self.recent.front(), self.recent.back()) {
            (Some((_, _, r0)), Some((_, _, r1))) => r1 - r0,
            _ => 0,
        };
        let hour_start = wall_ms.saturating_sub(60 * MINUTE_MS);
        let last_hour: u64 = self
            .minutes
            .iter()
            .filter(|(start, _)| *start + MINUTE_MS > hour_start)
            .map(|(_, images)| images)
            .sum();
        let minutes_observed = now
            .duration_since(self.started)
            .as_secs_f64()
            .clamp(1.0, 3600.0)
            / 60.0;
        let per_minute_hour = last_hour as f64 / minutes_observed;
        let current = wall_ms - wall_ms % MINUTE_MS;
        let minutes_since_start = (now.duration_since(self.started).as_secs() / 60) as usize + 1;
        let shown = minutes_since_start.clamp(CHART_MIN_MINUTES, CHART_MINUTES);
        let first = current.saturating_sub((shown as u64 - 1) * MINUTE_MS);
        let mut chart = Vec::with_capacity(shown);
        let mut stored = self.minutes.iter().peekable();
        let mut minute = first;
        while minute <= current {
            while stored.peek().is_some_and(|(start, _)| *start < minute) {
                stored.next();
            }
            let images = match stored.peek() {
                Some((start, images)) if *start == minute => *images,
                _ => 0,
            };
            chart.push((minute, images));
            minute += MINUTE_MS;
        }
        Snapshot {
            per_minute_now,
            per_minute_hour,
            requests_last_minute,
            done_today: self.done_today,
            failed_today: self.failed_today,
            chart,
            since_ms: self.since_ms,
            disk: self.disk.clone(),
            idle_for: self.idle_since.map(|since| now.duration_since(since)),
        }
    }
}

/// A cheap-clone handle on the sampler's state.
#[derive(Clone, Debug)]
pub struct Handle {
    state: Arc<Mutex<State>>,
    /// Changes of the outbox's disk condition, for the alerts.
    disk: watch::Sender<Disk>,
}

impl Handle {
    pub fn snapshot(&self) -> Snapshot {
        self.lock().snapshot(Instant::now(), wall_ms())
    }

    /// A receiver that sees every change of the disk condition.
    pub fn subscribe_disk(&self) -> watch::Receiver<Disk> {
        let mut disk = self.disk.subscribe();
        // A problem found before this subscriber came (the check before the start resumed)
        // is news to it.
        if *disk.borrow() != Disk::Ok {
            disk.mark_changed();
        }
        disk
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Starts the sampler; it stops with `cancel`.
/// The outbox's disk is checked once before this returns, so that a start knows it before
/// it resumes anything (a disk full from the start held no submit back until the first
/// sample, a race with the resume).
pub async fn spawn(
    pipeline: pipeline::Handle,
    outbox: PathBuf,
    cancel: CancellationToken,
) -> Handle {
    let handle = Handle {
        state: Arc::new(Mutex::new(State::new(Instant::now(), wall_ms()))),
        disk: watch::channel(Disk::Ok).0,
    };
    let sampler = handle.clone();
    check_disk_now(&sampler, &pipeline, &outbox).await;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_disk_check = Some(Instant::now());
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            let totals = pipeline.store().counts().totals;
            let requests = api_requests(&pipeline.client_stats());
            sampler
                .lock()
                .sample(&totals, requests, Instant::now(), wall_ms());
            if last_disk_check.is_none_or(|at| at.elapsed() >= DISK_EVERY) {
                last_disk_check = Some(Instant::now());
                check_disk_now(&sampler, &pipeline, &outbox).await;
            }
        }
        // A drain at shutdown is no stall.
        sampler.lock().stop();
    });
    handle
}

/// Checks the outbox's disk (off the runtime, at most [`DISK_EVERY`]) and tells the sampler
/// and the pipeline what it found.
async fn check_disk_now(sampler: &Handle, pipeline: &pipeline::Handle, outbox: &Path) {
    // A check that hangs (a stuck network share) or fails keeps the last answer.
    let Some(disk) = look_within(DISK_EVERY, outbox.to_path_buf(), check_disk).await else {
        return;
    };
    sampler.lock().set_disk(disk.clone());
    // New submits wait while the disk takes no more outputs.
    pipeline
        .health_state()
        .set_disk_problem((disk != Disk::Ok).then(|| disk.describe()));
    sampler.disk.send_if_modified(|current| {
        // Told when the kind changes, not each time the free bytes do (a disk other writers
        // use changed every sample: an alert every 5 s).
        if current.code() == disk.code() {
            *current = disk;
            return false;
        }
        match &disk {
            Disk::Ok => info!("The outbox can be written again"),
            other => error!(problem = other.code(), "{}", other.describe()),
        }
        *current = disk;
        true
    });
}

/// API requests in `stats`: every answered or failed call except result downloads (which go to
/// `tmp_url`s, outside the rate limit).
pub fn api_requests(stats: &ClientStats) -> u64 {
    let answered: u64 = stats
        .responses
        .iter()
        .filter(|((endpoint, _), _)| *endpoint != Endpoint::Download)
        .map(|(_, n)| n)
        .sum();
    let failed: u64 = stats
        .transport_errors
        .iter()
        .filter(|(endpoint, _)| **endpoint != Endpoint::Download)
        .map(|(_, n)| n)
        .sum();
    answered + failed
}

/// `look` at `outbox` on the blocking pool, its answer if it comes within `bound`: a look
/// that hangs (a stuck network share) or panics says nothing, and the last answer stands.
/// (`HealthState::writable`'s own look and the monitor's sample both go through here.)
pub async fn look_within(
    bound: std::time::Duration,
    outbox: std::path::PathBuf,
    look: impl FnOnce(&std::path::Path) -> Disk + Send + 'static,
) -> Option<Disk> {
    tokio::time::timeout(bound, tokio::task::spawn_blocking(move || look(&outbox)))
        .await
        .ok()?
        .ok()
}

/// The outbox's disk: its free space for the daemon's user and whether it can be written.
pub fn check_disk(outbox: &std::path::Path) -> Disk {
    check_filesystem_and(outbox, true)
}

/// The outbox's filesystem alone: mounted read-only, or full. Not whether the daemon may
/// write the outbox's own folder (its subfolders may take outputs all the same).
pub fn check_filesystem(outbox: &std::path::Path) -> Disk {
    check_filesystem_and(outbox, false)
}

fn check_filesystem_and(outbox: &std::path::Path, access: bool) -> Disk {
    match rustix::fs::statvfs(outbox) {
        Ok(stat) => {
            if stat.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) {
                return Disk::Unwritable {
                    why: "it is on a read-only filesystem".to_owned(),
                };
            }
            if access && let Err(err) = rustix::fs::access(outbox, rustix::fs::Access::WRITE_OK) {
                return Disk::Unwritable {
                    why: format!("{}", crate::os_error::OsCause(&std::io::Error::from(err))),
                };
            }
            // A filesystem that reports no size (some FUSE and network ones) says nothing
            // about its free space: not taken for a full one.
            if stat.f_blocks == 0 {
                return Disk::Ok;
            }
            classify_free(stat.f_bavail.saturating_mul(stat.f_frsize))
        }
        Err(err) => Disk::Unwritable {
            why: format!("{}", crate::os_error::OsCause(&std::io::Error::from(err))),
        },
    }
}

/// A full disk below [`DISK_FULL_BELOW`] free bytes.
pub fn classify_free(free_bytes: u64) -> Disk {
    if free_bytes < DISK_FULL_BELOW {
        Disk::Full { free_bytes }
    } else {
        Disk::Ok
    }
}

/// Milliseconds since the epoch, now.
pub fn wall_ms() -> u64 {
    crate::store::now_ms()
}

/// `12.3 MB`, `512 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(queued: u64, submitted: u64, done: u64, failed: u64) -> ManifestCounts {
        ManifestCounts {
            queued,
            submitted,
            done,
            failed,
            ..ManifestCounts::default()
        }
    }

    /// Two o'clock on some day, minute-aligned.
    const T0: u64 = 1_800_000_000_000 - 1_800_000_000_000 % DAY_MS + 2 * 3_600_000;

    #[test]
    fn rates_today_and_the_chart_count_what_finished_after_the_start() {
        let start = Instant::now();
        let mut state = State::new(start, T0);
        // Work that finished before the start is the baseline, not throughput.
        state.sample(&counts(10, 0, 100, 5), 1000, start, T0);
        for s in 1..=60u64 {
            // One image done per second, one request per second.
            state.sample(
                &counts(10, 0, 100 + s, 5),
                1000 + s,
                start + Duration::from_secs(s),
                T0 + s * 1000,
            );
        }
        let now = start + Duration::from_secs(60);
        let snap = state.snapshot(now, T0 + 60_000);
        assert!((snap.per_minute_now - 60.0).abs() < 1e-9, "{snap:?}");
        assert!((snap.per_minute_hour - 60.0).abs() < 1e-9, "{snap:?}");
        assert_eq!(snap.requests_last_minute, 60);
        assert_eq!(snap.done_today, 60);
        assert_eq!(snap.failed_today, 0);
        assert_eq!(
            snap.chart.len(),
            CHART_MIN_MINUTES,
            "half an hour after a start"
        );
        let last_two: Vec<u64> = snap.chart.iter().rev().take(2).map(|(_, n)| *n).collect();
        // Seconds 1..59 fall in the first minute, second 60 in the next.
        assert_eq!(last_two, vec![1, 59]);
        assert_eq!(snap.chart.last().map(|(m, _)| *m), Some(T0 + 60_000));
    }

    #[test]
    fn today_restarts_at_midnight_utc() {
        let start = Instant::now();
        let before_midnight = T0 - 2 * 3_600_000 + DAY_MS - 1000;
        let mut state = State::new(start, before_midnight);
        state.sample(&counts(0, 0, 0, 0), 0, start, before_midnight);
        state.sample(
            &counts(0, 0, 3, 1),
            0,
            start + Duration::from_millis(500),
            before_midnight + 500,
        );
        assert_eq!(
            state.snapshot(start, before_midnight + 500).done_today,
            3,
            "before midnight"
        );
        state.sample(
            &counts(0, 0, 5, 2),
            0,
            start + Duration::from_secs(2),
            before_midnight + 2000,
        );
        let snap = state.snapshot(start + Duration::from_secs(2), before_midnight + 2000);
        assert_eq!((snap.done_today, snap.failed_today), (2, 1));
    }

    #[test]
    fn idle_time_grows_only_while_work_is_pending_and_nothing_changes() {
        let start = Instant::now();
        let mut state = State::new(start, T0);
        state.sample(&counts(0, 0, 0, 0), 0, start, T0);
        assert_eq!(state.snapshot(start, T0).idle_for, None, "nothing pending");
        let at = |s: u64| start + Duration::from_secs(s);
        state.sample(&counts(2, 1, 0, 0), 0, at(1), T0 + 1000);
        state.sample(&counts(2, 1, 0, 0), 5, at(5), T0 + 5000);
        assert_eq!(
            state.snapshot(at(5), T0 + 5000).idle_for,
            Some(Duration::from_secs(4)),
            "requests (polls) are no progress"
        );
        state.sample(&counts(1, 2, 0, 0), 5, at(6), T0 + 6000);
        assert_eq!(
            state.snapshot(at(8), T0 + 8000).idle_for,
            Some(Duration::from_secs(2)),
            "a job changing state is progress"
        );
        state.sample(&counts(0, 0, 3, 0), 5, at(9), T0 + 9000);
        assert_eq!(state.snapshot(at(20), T0 + 20_000).idle_for, None);
    }

    #[test]
    fn a_disk_is_full_below_the_threshold() {
        assert_eq!(
            classify_free(DISK_FULL_BELOW - 1),
            Disk::Full {
                free_bytes: DISK_FULL_BELOW - 1
            }
        );
        assert_eq!(classify_free(DISK_FULL_BELOW), Disk::Ok);
        assert_eq!(check_disk(&std::env::temp_dir()).code(), "ok");
        let missing = Disk::Unwritable { why: String::new() };
        assert_eq!(
            check_disk(std::path::Path::new("/nonexistent/outbox")).code(),
            missing.code()
        );
    }
}
