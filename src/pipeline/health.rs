//! Whether the API takes the daemon's calls: paused after a systemic refusal (401, 402, 403:
//! submitting stops, queued jobs are kept), and failing while calls fail (no answer at all, or
//! errors) or wait for an answer without any succeeding, or while a bucket's endpoint does not
//! answer the daemon's own calls (staging, output checks). `run --once` reads both to end
//! instead of waiting for ever.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::claid::{ClaidError, Unanswered};
use crate::pipeline::notices::{Notice, Notices};

/// Whether the daemon may submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// The API refused the daemon in a way no retry mends (see [`Refusal`]); `reason` is the
    /// error's text.
    Paused {
        reason: String,
        refusal: Refusal,
    },
}

/// Why the API's answer pauses submitting (queued jobs kept, a probe resumes it): what no
/// retry mends. Every text that tells a pause (its log line, the `run --once` ending and its
/// exit code, the dashboard's banner, the alert's cause, the storage check's hint) is read
/// from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// An HTTP status: 401, 402 or 403 (the key, the credits, the scope), or one that says
    /// `api.base_url` is wrong (a redirect, 404, 405, 501).
    Status(u16),
    /// No TLS handshake with the API succeeds, in a way no retry mends ([`ClaidError::Tls`]).
    Tls,
    /// Another systemic error, with no HTTP answer: the daemon cannot make the API's
    /// requests (`api.base_url` does not combine with an endpoint's path).
    Other,
}

impl Refusal {
    /// The refusal a systemic error stands for.
    pub fn of(err: &ClaidError) -> Self {
        match err {
            ClaidError::Tls { .. } => Refusal::Tls,
            ClaidError::Account { status, .. } | ClaidError::Redirected { status, .. } => {
                Refusal::Status(*status)
            }
            ClaidError::Rejected { status, .. } | ClaidError::Server { status, .. }
                if err.class() == crate::claid::ErrorClass::Systemic =>
            {
                Refusal::Status(*status)
            }
            _ => Refusal::Other,
        }
    }

    /// The HTTP status, when an answer came.
    pub fn status(self) -> Option<u16> {
        match self {
            Refusal::Status(status) => Some(status),
            Refusal::Tls | Refusal::Other => None,
        }
    }

    /// How an alert names it: the status, `tls-handshake`, or `config`.
    pub fn code(self) -> String {
        match self {
            Refusal::Status(status) => status.to_string(),
            Refusal::Tls => "tls-handshake".to_owned(),
            Refusal::Other => "config".to_owned(),
        }
    }

    /// What happened, in a few words (`the API refused the key (401)`): the pause's log line,
    /// the dashboard's banner and the alert say it.
    pub fn what(self) -> &'static str {
        match self {
            Refusal::Status(401) => "the API refused the key (401)",
            Refusal::Status(402) => "the Claid account is out of credits (402)",
            Refusal::Status(403) => "the API key lacks a permission (403)",
            Refusal::Status(303) => {
                "the API answered 303 See Other (a gateway or login page in front of it?)"
            }
            Refusal::Status(300..=399) => "the API answered with a redirect (check `api.base_url`)",
            Refusal::Status(404 | 405 | 501) => {
                "the API has no such endpoint (check `api.base_url`)"
            }
            Refusal::Tls => "no TLS handshake with the API succeeds (check `api.base_url`)",
            Refusal::Other => "the daemon cannot make the API's requests (check `api.base_url`)",
            Refusal::Status(_) => "the API refused the daemon",
        }
    }

    /// What happened and what mends it, as a sentence without its capital: the ending of
    /// `run --once` says it, and the start's check for a 401 or 402.
    pub fn fix(self) -> &'static str {
        match self {
            Refusal::Status(401) => {
                "the API key was refused: check the key in `api.api_key_file` (or CLAID_API_KEY)"
            }
            Refusal::Status(402) => "the Claid account has no credits left: top it up",
            Refusal::Status(403) => {
                "the API key lacks the `image_editing` permission: create a key with it"
            }
            Refusal::Status(303) => {
                "the Claid API answered 303 See Other, as a gateway or a login page in front of it does: check what stands between this machine and `api.base_url` (a proxy that wants a login), and `api.base_url` itself"
            }
            Refusal::Status(300..=399) => {
                "the Claid API answered with a redirect: set `api.base_url` to the API's new address (the redirect's target without the endpoint's path, such as https://api.claid.ai/v1)"
            }
            Refusal::Status(404 | 405 | 501) => {
                "the Claid API has no such endpoint: check `api.base_url` (Claid's is https://api.claid.ai/v1, with its version)"
            }
            Refusal::Tls => {
                "no TLS handshake with the Claid API succeeds, and no retry mends that: check `api.base_url` (its scheme and host) and the server's certificate"
            }
            Refusal::Other => {
                "the daemon cannot make its requests to the Claid API: check `api.base_url`"
            }
            Refusal::Status(_) => "the API refused the daemon",
        }
    }

    /// What ends the pause, for a daemon that keeps running (the dashboard's banner says it):
    /// submitting resumes by itself once a probe passes, but a new key or a corrected
    /// `api.base_url` takes a restart (a reload does not apply them).
    pub fn remedy(self) -> &'static str {
        match self {
            Refusal::Status(401) => {
                "submitting resumes by itself once the API accepts the key again; a new key in `api.api_key_file` takes a restart"
            }
            Refusal::Status(402) => {
                "submitting resumes by itself once the Claid account has credits again"
            }
            Refusal::Status(403) => {
                "submitting resumes by itself once the key has the `image_editing` permission again; a new key takes a restart"
            }
            Refusal::Status(300..=399 | 404 | 405 | 501) | Refusal::Other => {
                "correct `api.base_url` in the config and restart the daemon (a reload does not change it); submitting resumes by itself if the API answers there again"
            }
            Refusal::Tls => {
                "submitting resumes by itself once a TLS handshake with the API succeeds (the server's certificate); a corrected `api.base_url` takes a restart"
            }
            Refusal::Status(_) => {
                "submitting resumes by itself once the API accepts the daemon's requests"
            }
        }
    }

    /// The exit code of `run --once` it ends: a wrong `api.base_url` is a usage error (64), a
    /// handshake that fails is an unavailable service (69), the rest is access refused (77).
    pub fn exit_code(self) -> i32 {
        match self {
            Refusal::Status(300..=399 | 404 | 405 | 501) | Refusal::Other => crate::exit::USAGE,
            Refusal::Tls => crate::exit::UNAVAILABLE,
            Refusal::Status(_) => crate::exit::NO_PERM,
        }
    }
}

/// `text` with its first letter in capitals, for a sentence that begins with it.
pub fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// How an outage of a result's download host begins its reason (`the result host h:443: …`).
/// How long a streak of nothing but 429 answers is flow control before it counts as the API
/// failing: Claid's quota window (a minute), after which a well-spaced call is answered.
pub const RATE_LIMITED_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// At most one outage of a storage's bucket is told (logged, with its end) in this time.
const STORAGE_TOLD_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// How a streak of 429 answers begins its reason in [`HealthState::failing`].
pub const RATE_LIMITED: &str = "every call answered 429 (rate limited)";

/// A streak of 429s this long is told once in the log (short resets are waited out without a
/// word: a run of nothing but 429s was silent until it ended).
pub const RATE_LIMITED_TOLD_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

pub const RESULT_HOST: &str = "the result host";

/// How long calls to the API or a bucket must have failed (or waited for an answer) without
/// one succeeding before it is told as an outage (`/healthz`, `status`, the dashboard): a blip
/// that a retry mends is not one.
pub const OUTAGE_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// What a poll waiting in [`HealthState::poll_hold`] gives its other waits (a webhook's watch)
/// as their timeout: the hold, not the time, ends it.
pub const HELD_FOR: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Shared by the submitter and every job task.
#[derive(Debug)]
pub struct HealthState {
    health: watch::Sender<Health>,
    inner: Mutex<Inner>,
    /// Told when submitting pauses and resumes.
    notices: Notices,
    /// `host:port` of the API, named in what `failing` says.
    api: String,
    /// The client's calls on the wire: one unanswered for long is an outage too.
    unanswered: Arc<Unanswered>,
    /// Jobs whose output write failed with an error that may heal, and the last such error:
    /// everywhere (a full disk, no file descriptors left: nothing new is submitted, Claid
    /// would bill results that cannot be written either) or under one folder of the outbox
    /// the daemon may not write (only images whose output goes there wait).
    writes: Mutex<Writes>,
    /// Told when a folder's writes are no longer held (see [`HealthState::folder_blocked`]).
    pub folders_changed: tokio::sync::Notify,
    /// Jobs retrying a failed output write (each counted while its [`WriteRetrying`] lives),
    /// since when there have been any, and the last failure: `run --once` gives up after
    /// `api.unreachable_timeout` of it.
    writes_failing: Mutex<(usize, Option<(Instant, String)>)>,
    /// Why the outbox's disk takes no more outputs (nearly full, or not writable), as the
    /// activity monitor last found it: new submits wait too.
    disk: Mutex<Option<(Instant, String)>>,
    /// The outbox, whose filesystem [`HealthState::writable`] looks at before a submit (none
    /// in unit tests), and when it last did.
    outbox: Option<PathBuf>,
    /// Held while one look is under way, so a submit that asks meanwhile waits for its
    /// answer instead of going on the last one.
    outbox_looked: tokio::sync::Mutex<Option<Instant>>,
    /// A look is still stuck in its `statvfs` (a hung network share): no other starts, so
    /// blocked threads do not pile up.
    outbox_stuck: Arc<std::sync::atomic::AtomicBool>,
    /// Why the inbox cannot be watched (its folder gone), since when.
    inbox: Mutex<Option<(Instant, String)>>,
    /// When a poll refused by a pause last went again as the pause's probe (see
    /// [`HealthState::poll_hold`]).
    poll_probe: Mutex<Option<Instant>>,
    /// A poll was refused by the pause (not only submits), and no call has succeeded since:
    /// the other tasks' polls are held too (see [`HealthState::polls_refused`]).
    polls_refused: std::sync::atomic::AtomicBool,
    /// Pauses begun in this process's life: a held poll tells the end of its pause from
    /// the same state again (another pause begun before it was woken, see
    /// [`HealthState::poll_hold`]).
    pauses: std::sync::atomic::AtomicU64,
}

/// Why a task's or a batch's poll waits for the pause to end (see
/// [`HealthState::poll_hold`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollHold {
    /// Its own last poll was refused by the pause.
    Refused,
    /// Its poll came due while polls are refused (another's poll was refused since the last
    /// call that succeeded): it is not sent to be refused too.
    Held,
}

/// One hold of a poll ([`HealthState::hold`]), as it began: kept whole across the wakes that
/// do not end it, so a poll woken meanwhile (webhooks found silent) neither waits a fresh
/// probe interval nor takes a pause begun since for its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    /// Not let go sooner (a probe interval after its own refusal).
    earliest: Instant,
    /// The pause it began in (the count of pauses begun, `pauses`, then).
    pause: u64,
}

/// Output writes that fail with an error that may heal, by where they hold submits.
#[derive(Debug, Default)]
struct Writes {
    /// Jobs held everywhere, and the last error.
    everywhere: (usize, String),
    /// By folder (the deepest one present on the output's way, which refused): jobs held
    /// there, and the last error.
    folders: std::collections::HashMap<PathBuf, (usize, String)>,
    /// Folders a job gave up writing into (its budget spent), with when the folder was last
    /// tried and why it failed: an image whose output goes there fails without a submit while
    /// a write there still fails (tried again at most every [`GIVEN_UP_PROBE`]).
    given_up: std::collections::HashMap<PathBuf, (Instant, String)>,
    /// Since when some output has been held (none released them all since).
    since: Option<Instant>,
}

impl Writes {
    /// Forgets since when outputs have been held once none is any more.
    fn end_hold_if_released(&mut self) {
        if self.everywhere.0 == 0 && self.folders.is_empty() {
            self.since = None;
        }
    }
}

/// How often a folder given up on (see [`HealthState::given_up_for`]) is tried again.
const GIVEN_UP_PROBE: std::time::Duration = std::time::Duration::from_secs(5);

/// How often a submit held back by [`HealthState::writable`] looks again.
const WRITES_PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// How often [`HealthState::writable`] looks at the outbox's filesystem at most.
pub const OUTBOX_LOOK_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// Why outputs cannot be written now (see [`HealthState::writes_blocked`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteBlock {
    /// A job's write failed with this error, and is retried while it may heal.
    Write(String),
    /// The outbox's disk, as the activity monitor worded it (a sentence of its own:
    /// [`crate::activity::Disk::describe`]).
    Disk(String),
}

impl WriteBlock {
    /// One sentence for `/healthz` and `status`.
    pub fn describe(&self) -> String {
        match self {
            WriteBlock::Write(why) => format!("an output cannot be written ({why})"),
            WriteBlock::Disk(sentence) => sentence.clone(),
        }
    }
}

/// One job whose output cannot be written for now (see [`HealthState::writes_blocked`]);
/// counted while this lives.
#[derive(Debug)]
pub struct WritesBlocked {
    health: Arc<HealthState>,
    /// The folder it holds, or `None`: everywhere.
    folder: Option<PathBuf>,
}

impl Drop for WritesBlocked {
    fn drop(&mut self) {
        let mut writes = self
            .health
            .writes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match &self.folder {
            None => {
                writes.everywhere.0 = writes.everywhere.0.saturating_sub(1);
                writes.end_hold_if_released();
                if writes.everywhere.0 == 0 {
                    drop(writes);
                    // The outbox's disk may still be full as the activity monitor saw it:
                    // then submitting stays paused, and saying "resumed" would be untrue.
                    match self.health.disk_problem() {
                        None => info!(
                            "No output waits for room to be written any more; submitting resumed"
                        ),
                        Some((_, disk)) => info!(
                            "No output waits for room to be written any more; submitting stays paused: {disk}"
                        ),
                    }
                }
            }
            Some(folder) => {
                let left = writes.folders.get_mut(folder).map(|held| {
                    held.0 = held.0.saturating_sub(1);
                    held.0
                });
                if left == Some(0) {
                    writes.folders.remove(folder);
                    writes.end_hold_if_released();
                    let given_up = writes.given_up.contains_key(folder);
                    drop(writes);
                    if given_up {
                        warn!(folder = %crate::text::Escaped::path(folder), "Writes into this folder were given up on; its images fail without a submit until a file can be created there");
                    } else {
                        info!(folder = %crate::text::Escaped::path(folder), "No output waits to be written into this folder any more; its images are submitted again");
                    }
                    self.health.folders_changed.notify_one();
                }
            }
        }
    }
}

/// One job retrying a failed output write (see [`HealthState::write_failed`]); counted while
/// this lives. When the last one ends, writes are no longer failing.
#[derive(Debug)]
pub struct WriteRetrying {
    health: Arc<HealthState>,
}

impl Drop for WriteRetrying {
    fn drop(&mut self) {
        let mut failing = self
            .health
            .writes_failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        failing.0 = failing.0.saturating_sub(1);
        if failing.0 == 0 {
            failing.1 = None;
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// When a call last succeeded.
    last_ok: Option<Instant>,
    /// Since when calls fail without one succeeding, and the last failure in words (for a
    /// connection: host, port and the operating system's cause).
    failing: Option<(Instant, String)>,
    /// By storage name: since when its bucket's endpoint does not answer the daemon's own
    /// calls (staging an input, checking an output object) without one succeeding, and why.
    /// One entry each, so a bucket that answers does not end another's outage.
    storage_failing: std::collections::BTreeMap<String, (Instant, String)>,
    /// By storage name: when a flapping kind of outage of its bucket was last told (logged)
    /// ([`HealthState::storage_flaky`]). A bucket that fails one call in a few (a throttling
    /// 503 SlowDown) begins and ends an outage at every other call: one is told per
    /// [`STORAGE_TOLD_EVERY`], and so is its end.
    storage_told: std::collections::BTreeMap<String, Instant>,
    /// The outages of `storage_failing` that were told, whose end is told too.
    storage_outage_told: std::collections::BTreeSet<String>,
    /// Storages whose bucket a listing found missing (`NoSuchBucket`): every look at an object
    /// there is answered "not found", which ends no outage; only a listing that finds the
    /// bucket does ([`HealthState::bucket_found`]).
    storage_missing: std::collections::BTreeSet<String>,
    /// By storage (or connector) name: a storage that cannot be used as configured until the
    /// daemon restarts (why, in words): Claid's connector found pointing elsewhere than its
    /// `url` during the run (its outputs go where the daemon does not look), or taken out of
    /// the config while Claid wrote its objects.
    storage_held: std::collections::BTreeMap<String, String>,
    /// Since when calls are answered 429 without one succeeding, and when the last was.
    rate_limited: Option<(Instant, Instant)>,
    /// Whether the current streak of 429s was told in the log ([`RATE_LIMITED_TOLD_AFTER`]).
    rate_limited_told: bool,
}

impl Inner {
    /// Records an outage of `storage`'s bucket (`why` its last cause); true when it begins.
    fn begin_storage_outage(&mut self, storage: &str, why: String) -> bool {
        // A storage held until a restart keeps the reason it was held for.
        if self.storage_held.contains_key(storage) {
            return false;
        }
        match self.storage_failing.get_mut(storage) {
            Some((_, last)) => {
                *last = why;
                false
            }
            None => {
                self.storage_failing
                    .insert(storage.to_owned(), (Instant::now(), why));
                true
            }
        }
    }

    /// Calls fail for `why` (from `now`, when no failure was noted since the last success):
    /// the outage's start is kept, its reason is the latest.
    fn failing_because(&mut self, now: Instant, why: String) {
        match &mut self.failing {
            Some((_, last)) => *last = why,
            None => self.failing = Some((now, why)),
        }
    }
}

impl HealthState {
    /// `api` is the API's `host:port`; `unanswered` the client's calls on the wire.
    pub fn new(notices: Notices, api: String, unanswered: Arc<Unanswered>) -> HealthState {
        HealthState {
            health: watch::channel(Health::Healthy).0,
            inner: Mutex::new(Inner::default()),
            notices,
            api,
            unanswered,
            writes: Mutex::new(Writes::default()),
            folders_changed: tokio::sync::Notify::new(),
            writes_failing: Mutex::new((0, None)),
            disk: Mutex::new(None),
            outbox: None,
            outbox_looked: tokio::sync::Mutex::new(None),
            outbox_stuck: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            inbox: Mutex::new(None),
            poll_probe: Mutex::new(None),
            polls_refused: std::sync::atomic::AtomicBool::new(false),
            pauses: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// A job's output write failed with `why`, an error that may heal: while the returned
    /// guard lives (the job holds it until its write succeeds or it fails), new submits wait,
    /// all of them (`folder` `None`: a full disk, no file descriptors left) or those whose
    /// output goes under `folder` (a folder the daemon may not write).
    pub fn block_writes(self: &Arc<Self>, why: String, folder: Option<PathBuf>) -> WritesBlocked {
        let mut writes = self.writes.lock().unwrap_or_else(PoisonError::into_inner);
        writes.since.get_or_insert_with(Instant::now);
        match &folder {
            None => {
                writes.everywhere.0 += 1;
                if writes.everywhere.0 == 1 {
                    error!(error = %why, "An output cannot be written; no new image is submitted until outputs can be written again");
                }
                writes.everywhere.1 = why;
            }
            Some(path) => {
                let held = writes.folders.entry(path.clone()).or_default();
                held.0 += 1;
                if held.0 == 1 {
                    error!(error = %why, folder = %crate::text::Escaped::path(path), "An output cannot be written into this folder; images whose output goes there wait, the others go on");
                }
                held.1 = why;
            }
        }
        WritesBlocked {
            health: self.clone(),
            folder,
        }
    }

    /// [`HealthState::writes_blocked`], with since how long (for `/healthz`'s `for_seconds`).
    pub fn writes_blocked_for(&self) -> Option<(std::time::Duration, WriteBlock)> {
        let since = self
            .writes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .since;
        let block = self.writes_blocked()?;
        let for_ = match (&block, since) {
            (WriteBlock::Write(_), Some(since)) => since.elapsed(),
            _ => self
                .disk_problem()
                .map_or(std::time::Duration::ZERO, |(for_, _)| for_),
        };
        Some((for_, block))
    }

    /// Why outputs cannot be written now, while some cannot (everywhere, or under a folder):
    /// what `/healthz` and `status` tell.
    pub fn writes_blocked(&self) -> Option<WriteBlock> {
        let writes = self.writes.lock().unwrap_or_else(PoisonError::into_inner);
        if writes.everywhere.0 > 0 {
            return Some(WriteBlock::Write(writes.everywhere.1.clone()));
        }
        if let Some((_, why)) = writes.folders.values().next() {
            return Some(WriteBlock::Write(why.clone()));
        }
        drop(writes);
        self.disk_problem().map(|(_, why)| WriteBlock::Disk(why))
    }

    /// A folder whose images wait for it to take writes, and why (one of them, when several).
    pub fn folder_held(&self) -> Option<(PathBuf, String)> {
        let writes = self.writes.lock().unwrap_or_else(PoisonError::into_inner);
        writes
            .folders
            .iter()
            .next()
            .map(|(folder, (_, why))| (folder.clone(), why.clone()))
    }

    /// Why no new image may be submitted at all now, while none may (see
    /// [`HealthState::writable`]).
    pub fn writes_blocked_everywhere(&self) -> Option<WriteBlock> {
        let writes = self.writes.lock().unwrap_or_else(PoisonError::into_inner);
        if writes.everywhere.0 > 0 {
            return Some(WriteBlock::Write(writes.everywhere.1.clone()));
        }
        drop(writes);
        self.disk_problem().map(|(_, why)| WriteBlock::Disk(why))
    }

    /// Whether an image whose output is `output` waits: a job's write into a folder on its
    /// way failed and is being retried (see [`HealthState::block_writes`]).
    pub fn folder_blocked(&self, output: &Path) -> bool {
        let writes = self.writes.lock().unwrap_or_else(PoisonError::into_inner);
        writes
            .folders
            .keys()
            .any(|folder| output.starts_with(folder))
    }

    /// A job gave up writing into `folder` (its writes failed with `why` until its budget was
    /// spent): images whose output goes there fail without a submit while it stays so (see
    /// [`HealthState::given_up_for`]).
    pub fn gave_up_on(&self, folder: PathBuf, why: String) {
        let mut writes = self.writes.lock().unwrap_or_else(PoisonError::into_inner);
        writes.given_up.insert(folder, (Instant::now(), why));
    }

    /// Why an image whose output is `output` is not submitted: a job gave up writing into a
    /// folder on its way and a write there still fails (tried again, with a file created and
    /// removed, at most every [`GIVEN_UP_PROBE`]). `None` once the folder takes writes again.
    pub fn given_up_for(&self, output: &Path) -> Option<String> {
        let mut writes = self.writes.lock().unwrap_or_else(PoisonError::into_inner);
        let folder = writes
            .given_up
            .keys()
            .filter(|folder| output.starts_with(folder))
            .max_by_key(|folder| folder.as_os_str().len())?
            .clone();
        let (tried, why) = writes.given_up.get(&folder)?.clone();
        if tried.elapsed() < GIVEN_UP_PROBE {
            return Some(why);
        }
        match tempfile::Builder::new()
            .prefix(".claid-hotfolder-probe-")
            .tempfile_in(&folder)
        {
            Ok(_) => {
                writes.given_up.remove(&folder);
                info!(folder = %crate::text::Escaped::path(&folder), "A folder given up on takes writes again");
                None
            }
            Err(_) => {
                writes
                    .given_up
                    .insert(folder, (Instant::now(), why.clone()));
                Some(why)
            }
        }
    }

    /// A job's output write failed with `why` and the job retries it: counted while the
    /// returned guard lives (the job keeps it until it ends: written, or given up).
    pub fn write_failed(
        self: &Arc<Self>,
        held: Option<WriteRetrying>,
        why: String,
    ) -> WriteRetrying {
        let mut failing = self
            .writes_failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if held.is_none() {
            failing.0 += 1;
        }
        let since = failing
            .1
            .take()
            .map_or_else(Instant::now, |(since, _)| since);
        failing.1 = Some((since, why));
        drop(failing);
        // (Built only when new: a guard made and dropped here would count itself off.)
        held.unwrap_or_else(|| WriteRetrying {
            health: self.clone(),
        })
    }

    /// Since how long, and why, jobs retry output writes that fail, with no moment without
    /// one (a folder of the outbox the daemon may not write, a full disk): `run --once` gives
    /// up on it after `api.unreachable_timeout`.
    pub fn writes_failing(&self) -> Option<(std::time::Duration, String)> {
        self.writes_failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .as_ref()
            .map(|(since, why)| (since.elapsed(), why.clone()))
    }

    /// Since how long, and why, the outbox's disk takes no more outputs (see
    /// [`HealthState::set_disk_problem`]): `run --once` gives up on it after
    /// `api.unreachable_timeout`, as on an API that does not answer.
    pub fn disk_problem(&self) -> Option<(std::time::Duration, String)> {
        self.disk
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|(since, why)| (since.elapsed(), why.clone()))
    }

    /// The outbox's disk as the activity monitor found it: `Some(why)` while it takes no more
    /// outputs (new submits wait: Claid would bill results that cannot be written), `None`
    /// once it does again.
    pub fn set_disk_problem(&self, why: Option<String>) {
        let mut disk = self.disk.lock().unwrap_or_else(PoisonError::into_inner);
        *disk = match (disk.take(), why) {
            (_, None) => None,
            (Some((since, _)), Some(why)) => Some((since, why)),
            (None, Some(why)) => Some((Instant::now(), why)),
        };
    }

    /// The inbox as the daemon last found it: `Some(why)` while it cannot be watched, `None`
    /// once it can (told once each way).
    pub fn set_inbox_problem(&self, why: Option<String>) {
        let mut inbox = self.inbox.lock().unwrap_or_else(PoisonError::into_inner);
        *inbox = match (inbox.take(), why) {
            (Some(_), None) => {
                info!("The inbox can be watched again");
                None
            }
            (None, None) => None,
            (Some((since, _)), Some(why)) => Some((since, why)),
            (None, Some(why)) => {
                error!(error = %why, "The inbox cannot be watched; /healthz says failing until it is back");
                Some((Instant::now(), why))
            }
        };
    }

    /// Since how long, and why, the inbox cannot be watched.
    pub fn inbox_problem(&self) -> Option<(std::time::Duration, String)> {
        self.inbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|(since, why)| (since.elapsed(), why.clone()))
    }

    /// This state, looking at `outbox`'s filesystem before submits (see
    /// [`HealthState::writable`]).
    pub fn watching_outbox(mut self, outbox: PathBuf) -> HealthState {
        self.outbox = Some(outbox);
        self
    }

    /// Waits while outputs cannot be written (see [`HealthState::block_writes`]); false when
    /// `cancel` fires first. Every submit asks first: the outbox's filesystem is looked at
    /// again here (at most every [`OUTBOX_LOOK_EVERY`]), not only by the activity monitor's
    /// sample every few seconds. (A filesystem remounted read-only between two samples had
    /// batches sent whose results could not be written: Claid billed ten images, none
    /// delivered.) A problem found here is cleared by the monitor's next sample that finds
    /// none.
    pub async fn writable(&self, cancel: &tokio_util::sync::CancellationToken) -> bool {
        self.look_at_outbox().await;
        while self.writes_blocked_everywhere().is_some() {
            tokio::select! {
                () = tokio::time::sleep(WRITES_PROBE_INTERVAL) => {}
                () = cancel.cancelled() => return false,
            }
        }
        true
    }

    /// Looks at the outbox's filesystem (read-only, or full) unless it did within
    /// [`OUTBOX_LOOK_EVERY`]; a problem is recorded as the activity monitor's would be.
    async fn look_at_outbox(&self) {
        let Some(outbox) = &self.outbox else {
            return;
        };
        let mut looked = self.outbox_looked.lock().await;
        if looked.is_some_and(|at| at.elapsed() < OUTBOX_LOOK_EVERY) {
            return;
        }
        use std::sync::atomic::Ordering;
        if self.outbox_stuck.swap(true, Ordering::AcqRel) {
            // The last look has not come back: its answer is still the last one.
            *looked = Some(Instant::now());
            return;
        }
        let stuck = self.outbox_stuck.clone();
        // Off the runtime, and bounded: a stuck network share keeps the last answer.
        let found = crate::activity::look_within(
            std::time::Duration::from_secs(1),
            outbox.clone(),
            move |dir| {
                let disk = crate::activity::check_filesystem(dir);
                stuck.store(false, Ordering::Release);
                disk
            },
        )
        .await;
        if let Some(disk) = found
            && disk != crate::activity::Disk::Ok
        {
            self.set_disk_problem(Some(disk.describe()));
        }
        *looked = Some(Instant::now());
    }

    pub fn current(&self) -> Health {
        self.health.borrow().clone()
    }

    /// A receiver that sees every change.
    pub fn subscribe(&self) -> watch::Receiver<Health> {
        self.health.subscribe()
    }

    /// The wait of a task's or a batch's poll that waits for a pause ([`PollHold`]). It ends
    /// when submitting resumes (the submitter's probe, or another poll, found the API
    /// accepting requests; for a poll that was itself refused, a probe interval after its
    /// refusal at the soonest), or when its turn comes as the pause's probe: one such poll
    /// goes every [`PAUSE_PROBE_INTERVAL`], for as long as the pause lasts. (When the tasks
    /// at Claid hold every `max_in_flight` slot, no submit can probe; without it a mended
    /// account was found out only at `poll.max`: batches at Claid during a 402 that a probe
    /// mended 10 s later were polled 30 s after it. Bounded by `poll.max` instead, the polls
    /// held through a pause longer than it all went at once, to be refused, and spent the
    /// minute's quota just before the pause ended.)
    ///
    /// [`PAUSE_PROBE_INTERVAL`]: crate::pipeline::submitter::PAUSE_PROBE_INTERVAL
    /// `None` never ends (a loop's hold not on: its `select!` arm is off).
    pub async fn poll_hold(&self, hold: Option<Hold>) {
        let Some(Hold { earliest, pause }) = hold else {
            return std::future::pending().await;
        };
        let interval = crate::pipeline::submitter::PAUSE_PROBE_INTERVAL;
        let mut health = self.health.subscribe();
        // A pause that ended while another began before this was woken (a watch shows the
        // latest state only) ended too: the other held this poll, maybe only submits meet it.
        let ended = |h: &Health| {
            !matches!(h, Health::Paused { .. })
                || self.pauses.load(std::sync::atomic::Ordering::Relaxed) != pause
        };
        loop {
            tokio::select! {
                // The sender lives as long as `self`: this ends only when the pause does.
                _ = health.wait_for(ended) => break,
                () = tokio::time::sleep(interval) => {
                    let mut last = self.poll_probe.lock().unwrap_or_else(PoisonError::into_inner);
                    if last.is_none_or(|at| at.elapsed() >= interval) {
                        *last = Some(Instant::now());
                        return;
                    }
                }
            }
        }
        tokio::time::sleep_until(earliest).await;
    }

    /// Whether a poll that comes due now is held ([`PollHold::Held`]): submitting is paused
    /// and a poll was refused since the last call that succeeded. A pause only submits meet
    /// (Claid refuses a submit with 402 when the credits are spent and may still answer
    /// polls) holds no poll. Without it, every task at Claid sent its next poll to be refused
    /// too, which spent the minute's quota the mended account then lacked.
    pub fn polls_refused(&self) -> bool {
        self.pause_state() == Some(true)
    }

    /// `Some(whether polls are refused)` while paused, `None` otherwise: read together under
    /// the watch's lock, under which `pause` and `ok` change both.
    fn pause_state(&self) -> Option<bool> {
        let health = self.health.borrow();
        matches!(*health, Health::Paused { .. }).then(|| {
            self.polls_refused
                .load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// The hold of a poll about to go (its rate-limit turn taken), if it waits instead of
    /// going: polls are being refused (a pause met by another's poll, maybe while this one
    /// waited for the limiter) and no hold has just let this one go (`released`). It waits
    /// for the pause's end or its turn as the probe ([`HealthState::poll_hold`]), instead of
    /// being refused too.
    pub fn holds_poll(&self, released: bool) -> Option<Hold> {
        (!released && self.polls_refused()).then(|| self.hold(PollHold::Held))
    }

    /// A hold of `kind` beginning now, in the pause on now. One refused for its own poll is
    /// never let go sooner than a probe interval after, resumed or not: a task refused for
    /// its own reason while others' calls succeed would flip the pause (an ERROR and an alert
    /// each time) on every success elsewhere.
    pub fn hold(&self, kind: PollHold) -> Hold {
        let now = Instant::now();
        Hold {
            earliest: match kind {
                PollHold::Refused => now + crate::pipeline::submitter::PAUSE_PROBE_INTERVAL,
                PollHold::Held => now,
            },
            pause: self.pauses.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// A task's or a batch's poll met a systemic refusal: pause, and hold the other polls
    /// (see [`HealthState::polls_refused`]).
    pub fn poll_refused(&self, err: &ClaidError, refusal: Refusal) {
        self.begin_pause(err, refusal, true);
    }

    /// The API answered a poll successfully: not failing; and not paused, unless the pause
    /// is one only submits met (no poll was refused since it began: Claid refuses a submit
    /// 402 when the credits are spent and may still answer polls), which the submitter's
    /// probe ends. (Ended by every answered poll, such a pause flapped: "submitting resumed",
    /// the next submits refused, paused again, an ERROR and an alert each time.)
    pub fn poll_ok(&self) {
        if self.pause_state() == Some(false) {
            self.answered();
            return;
        }
        self.ok();
    }

    /// The API answered: not failing (no outage).
    pub(crate) fn answered(&self) {
        let mut inner = self.lock();
        inner.last_ok = Some(Instant::now());
        inner.failing = None;
        inner.rate_limited = None;
    }

    /// The API answered a call successfully: not paused, not failing.
    pub fn ok(&self) {
        self.answered();
        let changed = self.health.send_if_modified(|h| {
            // Under the watch's lock, as `pause` sets and clears it.
            self.polls_refused
                .store(false, std::sync::atomic::Ordering::Relaxed);
            if *h == Health::Healthy {
                return false;
            }
            *h = Health::Healthy;
            true
        });
        if changed {
            info!("The API accepts requests again; submitting resumed");
            self.notices.send(Notice::Resumed);
        }
    }

    /// A systemic refusal (401/402/403, a wrong `api.base_url`, a TLS handshake that fails):
    /// pause submitting.
    pub fn pause(&self, err: &ClaidError, refusal: Refusal) {
        self.begin_pause(err, refusal, false);
    }

    /// Pauses, or marks the pause on as one whose polls are refused (`by_poll`). The flag
    /// is set and cleared under the watch's lock, with the state it belongs to (set after
    /// the pause, out of the lock, a poll refused in a pause that `ok` ended meanwhile
    /// marked the next pause, one only submits met).
    fn begin_pause(&self, err: &ClaidError, refusal: Refusal, by_poll: bool) {
        use std::sync::atomic::Ordering;
        let reason = crate::daemon::error_chain(err);
        let changed = self.health.send_if_modified(|h| {
            if matches!(h, Health::Paused { .. }) {
                if by_poll {
                    self.polls_refused.store(true, Ordering::Relaxed);
                }
                return false;
            }
            // A pause begins: whether its polls are refused is told by one of them.
            self.polls_refused.store(by_poll, Ordering::Relaxed);
            self.pauses.fetch_add(1, Ordering::Relaxed);
            *h = Health::Paused {
                reason: reason.clone(),
                refusal,
            };
            true
        });
        if changed {
            error!(
                error = %reason,
                "{}; submitting is paused, queued jobs are kept",
                capitalised(refusal.what())
            );
            self.notices.send(Notice::Paused { refusal, reason });
        }
    }

    /// A call was answered 429. 429s are flow control, waited out at the reset; a streak of
    /// nothing else for longer than [`RATE_LIMITED_GRACE`] (Claid's quota window) counts as
    /// the API failing ([`HealthState::failing`]), told as rate limited: `run --once` ended
    /// only after a submit's 120 of them (two hours at Claid's minute window), told as
    /// "unreachable".
    pub fn rate_limited(&self, err: &ClaidError) {
        let now = Instant::now();
        let mut inner = self.lock();
        // A streak is 429s each within the window of the one before (a 429 hours after the
        // last, with failures of other kinds between, begins a new one).
        let since = match inner.rate_limited {
            Some((since, last)) if now.duration_since(last) < RATE_LIMITED_GRACE => since,
            _ => {
                inner.rate_limited_told = false;
                now
            }
        };
        inner.rate_limited = Some((since, now));
        let streak = now.duration_since(since);
        if streak >= RATE_LIMITED_TOLD_AFTER && !inner.rate_limited_told {
            inner.rate_limited_told = true;
            warn!(
                for_s = streak.as_secs(),
                error = %crate::daemon::error_chain(err),
                "Claid has answered every call 429 (rate limited) for a while; calls wait for each reset. If this goes on, another client may spend the same key, or the account's limits are lower than api.requests_per_minute: check them with Claid (after {} s of nothing else `/healthz` says failing, and `run --once` ends 69 at `api.unreachable_timeout`)",
                RATE_LIMITED_GRACE.as_secs()
            );
        }
        if streak >= RATE_LIMITED_GRACE {
            let why = format!(
                "{RATE_LIMITED} for {} s: {}",
                streak.as_secs(),
                crate::daemon::error_chain(err)
            );
            // Under the same lock as the streak (a success between the two undid nothing).
            inner.failing_because(now, why);
        }
    }

    /// A call sent at `sent_at` failed transiently (no answer, a 5xx, a timeout). With no
    /// success since it was sent, the outage began when it was sent: it waited for its answer
    /// all along (counted as waiting until then; starting at its failure, a hung API's
    /// `run --once` ended one `api.request_timeout` after `api.unreachable_timeout`).
    /// Returns whether a call succeeded since `sent_at`, read under the same lock: the API is
    /// there, so the failure is this call's own, not an outage.
    pub fn failed(&self, err: &ClaidError, sent_at: Instant) -> bool {
        let why = crate::daemon::error_chain(err);
        let mut inner = self.lock();
        let answered_since = inner.last_ok.is_some_and(|at| at > sent_at);
        let since = if answered_since {
            Instant::now()
        } else {
            sent_at
        };
        inner.failing_because(since, why);
        answered_since
    }

    /// Calls fail for `why`: the outage's start is kept, its reason is the latest.
    fn failing_because(&self, why: String) {
        self.lock().failing_because(Instant::now(), why);
    }

    /// A result's download found its host away (`url` is the result's temporary URL): an
    /// outage told as one of that host, not of the API, whose `host:port` may differ.
    pub fn result_host_failed(&self, url: &str, err: &ClaidError) {
        let host = reqwest::Url::parse(url)
            .ok()
            .and_then(|url| {
                let host = url.host_str()?.to_owned();
                Some(match url.port_or_known_default() {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                })
            })
            .unwrap_or_else(|| "?".to_owned());
        self.failing_because(format!(
            "{RESULT_HOST} {}: {}",
            crate::text::Escaped::str(&host),
            crate::daemon::error_chain(err)
        ));
    }

    /// A call of the daemon's own to a bucket (staging, an output check) found its endpoint
    /// away (`why` names it): an outage of the storage, which `run --once` gives up on like
    /// one of the API.
    /// A call of the daemon's own to a bucket (staging, an output check) failed in a way that
    /// does not heal by itself at once (`why` names it): an outage of the storage, which
    /// `run --once` gives up on like one of the API. True when this starts an outage of
    /// `storage`'s bucket, so that the caller logs it once rather than once per job and retry.
    pub fn storage_failed(&self, storage: &str, why: String) -> bool {
        let mut inner = self.lock();
        let started = inner.begin_storage_outage(storage, why);
        if started {
            inner.storage_outage_told.insert(storage.to_owned());
        }
        started
    }

    /// [`HealthState::storage_failed`] for a failure that may come and go from call to call (no
    /// answer, a 5xx): true when it is to be told, that is when it starts an outage and none
    /// was told in the last [`STORAGE_TOLD_EVERY`], or when an outage not told at its start
    /// has lasted past that; a flapping bucket is logged once a minute.
    pub fn storage_flaky(&self, storage: &str, why: String) -> bool {
        let mut inner = self.lock();
        inner.begin_storage_outage(storage, why);
        if inner.storage_outage_told.contains(storage) {
            return false;
        }
        let now = Instant::now();
        if inner
            .storage_told
            .get(storage)
            .is_some_and(|at| now.duration_since(*at) < STORAGE_TOLD_EVERY)
        {
            return false;
        }
        inner.storage_told.insert(storage.to_owned(), now);
        inner.storage_outage_told.insert(storage.to_owned());
        true
    }

    /// A listing found `storage`'s bucket missing (`NoSuchBucket`, `why`): an outage that only
    /// [`HealthState::bucket_found`] ends. True when this is news (to be logged).
    pub fn bucket_missing(&self, storage: &str, why: String) -> bool {
        let mut inner = self.lock();
        inner.begin_storage_outage(storage, why);
        inner.storage_outage_told.insert(storage.to_owned());
        inner.storage_missing.insert(storage.to_owned())
    }

    /// `storage` cannot be used as configured (`why`: its connector at Claid points elsewhere
    /// than its `url`, or it left the config while Claid wrote its objects): an outage of the
    /// storage that lasts until the daemon restarts ([`HealthState::storage_held`]); nothing
    /// of it is submitted meanwhile, and `run --once` ends 64. True when this is news.
    pub fn hold_storage(&self, storage: &str, why: String) -> bool {
        let mut inner = self.lock();
        inner.begin_storage_outage(storage, why.clone());
        inner.storage_outage_told.insert(storage.to_owned());
        inner.storage_held.insert(storage.to_owned(), why).is_none()
    }

    /// Why `storage` is held until a restart ([`HealthState::hold_storage`]), if it is.
    pub fn storage_held(&self, storage: &str) -> Option<String> {
        self.lock().storage_held.get(storage).cloned()
    }

    /// [`HealthState::storage_held`] of the first storage found so, if any.
    pub fn any_storage_held(&self) -> Option<String> {
        self.lock().storage_held.values().next().cloned()
    }

    /// A listing found `storage`'s bucket: a missing bucket's outage is over.
    pub fn bucket_found(&self, storage: &str) {
        self.lock().storage_missing.remove(storage);
        self.storage_ok(storage);
    }

    /// A call to `storage`'s bucket succeeded: its outage, if any, is over (said once, when
    /// its beginning was). Not a missing bucket's, which answers every look "not found".
    pub fn storage_ok(&self, storage: &str) {
        let mut inner = self.lock();
        if inner.storage_missing.contains(storage) || inner.storage_held.contains_key(storage) {
            return;
        }
        let Some((since, _)) = inner.storage_failing.remove(storage) else {
            return;
        };
        let told = inner.storage_outage_told.remove(storage);
        drop(inner);
        if told {
            tracing::info!(
                storage = %crate::text::Escaped::str(storage),
                after_s = since.elapsed().as_secs(),
                "The storage's bucket answers again"
            );
        }
    }

    /// Whether some call succeeded after `t`: a transient failure since then is the job's
    /// own, not an outage.
    pub fn succeeded_since(&self, t: Instant) -> bool {
        self.lock().last_ok.is_some_and(|at| at > t)
    }

    /// How long calls have failed, or one has waited for its answer, without any succeeding,
    /// and why in words that name the API's `host:port`.
    pub fn failing(&self) -> Option<(std::time::Duration, String)> {
        let inner = self.lock();
        // A call still waiting counts only when nothing has succeeded since it was sent.
        let waiting = self.unanswered.oldest_after(inner.last_ok);
        let failed = inner.failing.as_ref();
        let api = &self.api;
        match (failed, waiting) {
            (Some((since, why)), waiting) => {
                let since = waiting.map_or(*since, |sent| sent.min(*since));
                let why = if why.contains(api.as_str()) || why.starts_with(RESULT_HOST) {
                    why.clone()
                } else {
                    format!("the API at {api}: {why}")
                };
                Some((since.elapsed(), why))
            }
            (None, Some(sent)) => {
                let waited = sent.elapsed();
                Some((
                    waited,
                    format!(
                        "no answer from {api} to a request sent {} s ago",
                        waited.as_secs()
                    ),
                ))
            }
            // The longest outage among the buckets speaks for them.
            (None, None) => inner
                .storage_failing
                .iter()
                .min_by_key(|(_, (since, _))| *since)
                .map(|(name, (since, why))| {
                    (
                        since.elapsed(),
                        format!(
                            "the bucket of storage `{}`: {why}",
                            crate::text::Escaped::str(name)
                        ),
                    )
                }),
        }
    }

    /// Whether what [`HealthState::failing`] tells is a bucket's outage alone (the API
    /// answers).
    pub fn only_storage_failing(&self) -> bool {
        let inner = self.lock();
        inner.failing.is_none()
            && self.unanswered.oldest_after(inner.last_ok).is_none()
            && !inner.storage_failing.is_empty()
    }

    /// [`HealthState::failing`], once it has lasted [`OUTAGE_AFTER`].
    /// A storage held until a restart ([`HealthState::hold_storage`]) is one at once.
    pub fn outage(&self) -> Option<(std::time::Duration, String)> {
        let inner = self.lock();
        if let Some((name, why)) = inner.storage_held.iter().next() {
            let since = inner
                .storage_failing
                .get(name)
                .map_or(std::time::Duration::ZERO, |(since, _)| since.elapsed());
            return Some((
                since,
                format!(
                    "the bucket of storage `{}`: {why}",
                    crate::text::Escaped::str(name)
                ),
            ));
        }
        drop(inner);
        self.failing().filter(|(for_, _)| *for_ >= OUTAGE_AFTER)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One type tells a pause everywhere: its cause read from the error, its alert code, its
    /// words and its `run --once` exit code (a TLS refusal carries no status).
    #[test]
    fn a_refusal_is_read_from_the_error_and_tells_its_code_words_and_exit() {
        use crate::claid::Endpoint;
        let account = |status| ClaidError::Account {
            endpoint: Endpoint::Submit,
            status,
            request_id: None,
            error_code: String::new(),
            error_message: String::new(),
        };
        let tls = ClaidError::Tls {
            endpoint: Endpoint::Submit,
            addr: "127.0.0.1:1".to_owned(),
            cause: "TLS handshake failed: InvalidContentType".to_owned(),
        };
        assert_eq!(Refusal::of(&account(402)), Refusal::Status(402));
        assert_eq!(Refusal::of(&tls), Refusal::Tls);
        assert_eq!(Refusal::Tls.status(), None);
        assert_eq!(Refusal::Tls.code(), "tls-handshake");
        assert_eq!(Refusal::Status(401).code(), "401");
        assert_eq!(Refusal::Status(401).exit_code(), crate::exit::NO_PERM);
        assert_eq!(Refusal::Status(308).exit_code(), crate::exit::USAGE);
        assert_eq!(Refusal::Status(404).exit_code(), crate::exit::USAGE);
        assert_eq!(Refusal::Tls.exit_code(), crate::exit::UNAVAILABLE);
        // Only a `base_url` that makes no request causes `Other`: a usage error, like a 404.
        assert_eq!(Refusal::Other.exit_code(), crate::exit::USAGE);
        assert_eq!(Refusal::Other.code(), "config");
        // A 303 is a gateway's login page, not Claid moved: not "set base_url to it".
        assert!(!Refusal::Status(303).fix().contains("new address"));
        assert!(
            Refusal::Status(308)
                .fix()
                .contains("without the endpoint's path")
        );
        assert!(Refusal::Tls.what().contains("TLS handshake"));
        assert!(Refusal::Status(404).fix().contains("`api.base_url`"));
        assert_eq!(
            capitalised(Refusal::Status(402).what()),
            "The Claid account is out of credits (402)"
        );

        // The pause carries it, and tells it once.
        let state = health();
        state.pause(&tls, Refusal::of(&tls));
        state.pause(&account(401), Refusal::Status(401));
        assert!(matches!(
            state.current(),
            Health::Paused {
                refusal: Refusal::Tls,
                ..
            }
        ));
    }

    /// Claid's answer `status` (401/402/403) to a call to `endpoint`.
    fn refusal(endpoint: crate::claid::Endpoint, status: u16) -> ClaidError {
        ClaidError::Account {
            endpoint,
            status,
            request_id: None,
            error_code: String::new(),
            error_message: String::new(),
        }
    }

    fn health() -> HealthState {
        HealthState::new(
            Notices::default(),
            "127.0.0.1:1".to_owned(),
            Arc::new(Unanswered::default()),
        )
    }

    /// A streak of 429s is told once in the log once it lasts [`RATE_LIMITED_TOLD_AFTER`] (a
    /// run of nothing but 429s with short resets was silent until `run --once` ended), and a
    /// new streak after an answer is told again.
    #[tokio::test(start_paused = true)]
    async fn a_streak_of_429s_is_told_once_it_lasts() {
        use std::time::Duration;
        let state = health();
        let err = refusal(crate::claid::Endpoint::Submit, 429);
        let told = |state: &HealthState| state.lock().rate_limited_told;
        state.rate_limited(&err);
        tokio::time::advance(Duration::from_secs(5)).await;
        state.rate_limited(&err);
        assert!(!told(&state), "5 s");
        tokio::time::advance(Duration::from_secs(6)).await;
        state.rate_limited(&err);
        assert!(told(&state), "11 s");
        state.ok();
        state.rate_limited(&err);
        assert!(!told(&state), "a new streak");
        tokio::time::advance(RATE_LIMITED_TOLD_AFTER).await;
        state.rate_limited(&err);
        assert!(told(&state), "told again");
    }

    /// A call that waited for its answer and then failed (a hung API's timeout), with no
    /// success since it was sent, makes the outage begin when it was sent: `run --once` gives
    /// up `api.unreachable_timeout` after that, not one request timeout later. A call sent
    /// before a success counts from its failure.
    #[tokio::test(start_paused = true)]
    async fn a_call_that_timed_out_counts_the_outage_from_when_it_was_sent() {
        use std::time::Duration;
        let state = health();
        let err = ClaidError::Connect {
            endpoint: crate::claid::Endpoint::Poll,
            addr: "127.0.0.1:1".to_owned(),
            cause: "timed out".to_owned(),
        };
        let sent = Instant::now();
        tokio::time::advance(Duration::from_secs(30)).await;
        state.failed(&err, sent);
        let (failing_for, _) = state.failing().expect("failing");
        assert!(failing_for >= Duration::from_secs(30), "{failing_for:?}");
        // After a success, a call sent before it counts from its own failure.
        state.ok();
        let before = Instant::now();
        tokio::time::advance(Duration::from_secs(5)).await;
        state.ok();
        tokio::time::advance(Duration::from_secs(5)).await;
        state.failed(&err, before);
        let (failing_for, _) = state.failing().expect("failing");
        assert!(failing_for < Duration::from_secs(1), "{failing_for:?}");
    }

    /// A held poll is let go when its pause ends though another begins before it is woken
    /// (the watch shows the latest state only: it stayed held through the second pause, one
    /// only submits met, at one poll per probe interval); the new pause's polls are not
    /// refused until one of them is.
    #[tokio::test(start_paused = true)]
    async fn a_held_poll_goes_when_its_pause_ends_though_another_begins_at_once() {
        use std::time::Duration;
        let state = Arc::new(health());
        let refused = refusal(crate::claid::Endpoint::Poll, 403);
        state.poll_refused(&refused, Refusal::of(&refused));
        assert!(state.polls_refused());
        *state.poll_probe.lock().expect("lock") = Some(Instant::now() + Duration::from_secs(600));
        let held = {
            let state = state.clone();
            tokio::spawn(async move { state.poll_hold(Some(state.hold(PollHold::Held))).await })
        };
        tokio::task::yield_now().await;
        assert!(!held.is_finished(), "held while polls are refused");
        // Ended, and a submit's refusal begins another before the held poll runs.
        state.ok();
        state.pause(&refused, Refusal::of(&refused));
        assert!(!state.polls_refused(), "a pause only submits met so far");
        tokio::time::timeout(Duration::from_secs(1), held)
            .await
            .expect("let go: its pause ended")
            .expect("joined");
        // A poll refused while that pause is on marks it as refusing polls.
        state.poll_refused(&refused, Refusal::of(&refused));
        assert!(state.polls_refused());
    }

    /// A hold kept across a wake that does not end it (webhooks found silent) keeps its start:
    /// its refusal's probe interval counts from the refusal, not from the wake, and a pause
    /// begun since is not taken for its own.
    #[tokio::test(start_paused = true)]
    async fn a_hold_kept_across_a_wake_keeps_its_start() {
        use crate::pipeline::submitter::PAUSE_PROBE_INTERVAL;
        use std::time::Duration;
        let state = Arc::new(health());
        let refused = refusal(crate::claid::Endpoint::Poll, 403);
        state.poll_refused(&refused, Refusal::of(&refused));
        *state.poll_probe.lock().expect("lock") = Some(Instant::now() + Duration::from_secs(600));
        let hold = state.hold(PollHold::Refused);
        let start = Instant::now();
        // Woken after 3 s by something else; meanwhile the pause ends and another begins.
        let woken = tokio::time::timeout(Duration::from_secs(3), state.poll_hold(Some(hold))).await;
        assert!(woken.is_err(), "still held at the wake");
        state.ok();
        state.pause(&refused, Refusal::of(&refused));
        state.poll_hold(Some(hold)).await;
        assert_eq!(
            start.elapsed(),
            PAUSE_PROBE_INTERVAL,
            "let go a probe interval after its refusal: its pause ended"
        );
    }

    /// Polls a pause refused wait for its end (a probe interval at least), for `poll.max` at
    /// the latest, and meanwhile one of them goes every probe interval (the others wait).
    #[tokio::test(start_paused = true)]
    async fn refused_polls_go_again_one_per_probe_interval_and_all_when_the_pause_ends() {
        use crate::pipeline::submitter::PAUSE_PROBE_INTERVAL;
        use std::time::Duration;
        let state = Arc::new(health());
        let refused = refusal(crate::claid::Endpoint::Poll, 402);
        state.pause(&refused, Refusal::of(&refused));
        let long = Duration::from_secs(600);
        let waiter = || {
            let state = state.clone();
            let start = Instant::now();
            tokio::spawn(async move {
                state.poll_hold(Some(state.hold(PollHold::Refused))).await;
                start.elapsed()
            })
        };
        // Two wait: one goes as the probe at the first interval, the other at the next.
        let (a, b) = (waiter(), waiter());
        let mut waited = [a.await.expect("a"), b.await.expect("b")];
        waited.sort();
        assert_eq!(waited, [PAUSE_PROBE_INTERVAL, PAUSE_PROBE_INTERVAL * 2]);
        // One that waits when the pause ends goes then, though not sooner than a probe
        // interval after its own refusal.
        let c = waiter();
        // Let it start waiting before time moves.
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!c.is_finished(), "still paused");
        state.ok();
        assert_eq!(c.await.expect("c"), PAUSE_PROBE_INTERVAL);
        // One still waiting past that interval goes at once when the pause ends.
        state.pause(&refused, Refusal::of(&refused));
        *state.poll_probe.lock().expect("lock") = Some(Instant::now() + long);
        let d = waiter();
        tokio::task::yield_now().await;
        tokio::time::advance(PAUSE_PROBE_INTERVAL + Duration::from_secs(2)).await;
        assert!(!d.is_finished(), "no probe turn for it");
        state.ok();
        assert_eq!(
            d.await.expect("d"),
            PAUSE_PROBE_INTERVAL + Duration::from_secs(2)
        );
        // No time bound (`poll.max` was one: every poll held through a longer pause then
        // went at once): while others take the probe turns, it waits for the pause's end.
        state.pause(&refused, Refusal::of(&refused));
        *state.poll_probe.lock().expect("lock") = Some(Instant::now() + long);
        let e = waiter();
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_secs(120)).await;
        assert!(!e.is_finished(), "held past any poll.max");
        state.ok();
        assert_eq!(e.await.expect("e"), Duration::from_secs(120));
    }

    /// Polls are held only after a poll was refused (a pause only submits meet holds none),
    /// until a call succeeds; a held poll goes as soon as the pause ends.
    #[tokio::test(start_paused = true)]
    async fn polls_are_held_once_a_poll_is_refused_until_a_call_succeeds() {
        use std::time::Duration;
        let state = Arc::new(health());
        let refused = refusal(crate::claid::Endpoint::Submit, 402);
        state.pause(&refused, Refusal::of(&refused));
        assert!(!state.polls_refused(), "a submit's refusal holds no poll");
        state.poll_refused(&refused, Refusal::of(&refused));
        assert!(state.polls_refused());
        let held = {
            let state = state.clone();
            let start = Instant::now();
            tokio::spawn(async move {
                state.poll_hold(Some(state.hold(PollHold::Held))).await;
                start.elapsed()
            })
        };
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!held.is_finished(), "held while paused");
        state.ok();
        assert!(!state.polls_refused(), "a success ends the hold");
        assert_eq!(held.await.expect("held"), Duration::from_secs(2));
        // A new pause met by a submit alone holds none again, even when a refusal that
        // raced past the success left the flag raised.
        state
            .polls_refused
            .store(true, std::sync::atomic::Ordering::Relaxed);
        state.pause(&refused, Refusal::of(&refused));
        assert!(!state.polls_refused());
        // An answered poll does not end a pause only submits met (it flapped), nor is it
        // held; one a poll's refusal began, it ends.
        state.poll_ok();
        assert!(
            matches!(state.current(), Health::Paused { .. }),
            "a submit-only pause stays"
        );
        state.poll_refused(&refused, Refusal::of(&refused));
        state.poll_ok();
        assert_eq!(state.current(), Health::Healthy);
        state.pause(&refused, Refusal::of(&refused));
        // A held poll goes as the pause's probe when its turn comes.
        state.poll_refused(&refused, Refusal::of(&refused));
        let begun = Instant::now();
        state.poll_hold(Some(state.hold(PollHold::Held))).await;
        assert_eq!(
            begun.elapsed(),
            crate::pipeline::submitter::PAUSE_PROBE_INTERVAL
        );
        assert!(state.polls_refused(), "still paused: the others stay held");
    }

    /// A hold of writes says since when it lasts (`/healthz`'s `for_seconds`), from its first
    /// guard until its last one goes; a hold starting later counts from then.
    #[tokio::test(start_paused = true)]
    async fn a_hold_of_writes_says_since_when() {
        let health = Arc::new(health());
        let a = health.block_writes("ENOSPC".to_owned(), None);
        tokio::time::advance(std::time::Duration::from_secs(20)).await;
        let b = health.block_writes("EACCES".to_owned(), Some(PathBuf::from("/out/a")));
        tokio::time::advance(std::time::Duration::from_secs(10)).await;
        drop(a);
        let (lasted, _) = health.writes_blocked_for().expect("held");
        assert_eq!(lasted.as_secs(), 30);
        drop(b);
        assert!(health.writes_blocked_for().is_none());
        let _c = health.block_writes("ENOSPC".to_owned(), None);
        tokio::time::advance(std::time::Duration::from_secs(5)).await;
        assert_eq!(health.writes_blocked_for().expect("held").0.as_secs(), 5);
    }

    /// A folder's hold holds only outputs under it, not everything; it ends (and is told) when
    /// its last guard goes.
    #[tokio::test]
    async fn a_folder_hold_holds_only_what_goes_under_it() {
        let health = Arc::new(health());
        let a = health.block_writes("EACCES".to_owned(), Some(PathBuf::from("/out/a")));
        let again = health.block_writes("EACCES".to_owned(), Some(PathBuf::from("/out/a")));
        assert!(health.folder_blocked(Path::new("/out/a/b/x.jpg")));
        assert!(!health.folder_blocked(Path::new("/out/ab/x.jpg")));
        assert!(!health.folder_blocked(Path::new("/out/c/x.jpg")));
        assert!(health.writes_blocked_everywhere().is_none());
        assert_eq!(
            health.writes_blocked(),
            Some(WriteBlock::Write("EACCES".to_owned()))
        );
        drop(a);
        assert!(health.folder_blocked(Path::new("/out/a/x.jpg")));
        drop(again);
        assert!(!health.folder_blocked(Path::new("/out/a/x.jpg")));
        // Told once the last guard went.
        tokio::time::timeout(
            std::time::Duration::from_secs(1),
            health.folders_changed.notified(),
        )
        .await
        .expect("told");
        let disk = health.block_writes("ENOSPC".to_owned(), None);
        assert_eq!(
            health.writes_blocked_everywhere(),
            Some(WriteBlock::Write("ENOSPC".to_owned()))
        );
        drop(disk);
        assert!(health.writes_blocked().is_none());
    }

    /// A folder given up on fails what goes under it until a write there works again, tried
    /// at most every few seconds.
    #[tokio::test(start_paused = true)]
    async fn a_folder_given_up_on_is_tried_again_and_released_once_it_takes_writes() {
        let health = health();
        let dir = tempfile::tempdir().expect("dir");
        let missing = dir.path().join("not-there");
        health.gave_up_on(missing.clone(), "EACCES".to_owned());
        health.gave_up_on(dir.path().to_path_buf(), "EACCES".to_owned());
        let inside = dir.path().join("x.jpg");
        assert_eq!(health.given_up_for(&inside).as_deref(), Some("EACCES"));
        assert!(health.given_up_for(Path::new("/elsewhere/x.jpg")).is_none());
        tokio::time::advance(GIVEN_UP_PROBE).await;
        // A folder where a file cannot be created stays given up; one where it can is released.
        assert_eq!(
            health.given_up_for(&missing.join("x.jpg")).as_deref(),
            Some("EACCES")
        );
        assert!(health.given_up_for(&inside).is_none());
        assert!(health.given_up_for(&inside).is_none());
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("list").count(),
            0,
            "the probe leaves no file behind"
        );
    }

    /// A storage whose connector moved at Claid stays held until a restart: a call to its
    /// bucket that succeeds (objects Claid wrote before the move) does not end it; it is news
    /// once, and names itself in `failing`.
    #[tokio::test]
    async fn a_moved_connector_holds_its_storage_until_a_restart() {
        let health = health();
        assert!(health.storage_held("a").is_none());
        assert!(health.hold_storage("a", "points at s3://b/moved".to_owned()));
        assert!(!health.hold_storage("a", "points at s3://b/moved".to_owned()));
        health.storage_ok("a");
        assert_eq!(
            health.storage_held("a").as_deref(),
            Some("points at s3://b/moved")
        );
        assert!(health.any_storage_held().is_some());
        assert!(health.storage_held("b").is_none());
        let (_, why) = health.failing().expect("the storage is failing");
        assert!(why.contains("s3://b/moved"), "{why}");
    }

    /// Two storages: one bucket answering does not end the other's outage, each outage is told
    /// once when it starts, and `failing` names the bucket still away.
    #[tokio::test]
    async fn each_storages_outage_is_its_own() {
        let health = health();
        assert!(health.storage_failed("a", "connection refused".to_owned()));
        assert!(!health.storage_failed("a", "connection refused again".to_owned()));
        assert!(health.storage_failed("b", "timed out".to_owned()));
        health.storage_ok("b");
        let (_, why) = health.failing().expect("a is still away");
        assert!(
            why.contains("storage `a`") && why.contains("again"),
            "{why}"
        );
        assert!(health.only_storage_failing());
        assert!(
            !health.storage_failed("a", "still refused".to_owned()),
            "b's answer did not end a's outage, so it is not told again"
        );
        health.storage_ok("a");
        assert_eq!(health.failing(), None);
        assert!(!health.only_storage_failing());
    }

    /// A bucket that fails one call in a few (a throttling 503 SlowDown) begins and ends an
    /// outage at every other call: one outage is told a minute, and one not told then is told
    /// once it lasts past that minute.
    #[tokio::test(start_paused = true)]
    async fn a_flapping_bucket_is_told_once_a_minute() {
        let health = health();
        assert!(health.storage_flaky("a", "503 SlowDown".to_owned()));
        health.storage_ok("a");
        for _ in 0..5 {
            tokio::time::advance(std::time::Duration::from_secs(2)).await;
            assert!(!health.storage_flaky("a", "503 SlowDown".to_owned()));
            assert!(
                health.failing().is_some(),
                "not told, but failing all the same"
            );
            health.storage_ok("a");
        }
        // An outage begun within the minute, not told, goes on past it: told then.
        assert!(!health.storage_flaky("a", "connection refused".to_owned()));
        tokio::time::advance(STORAGE_TOLD_EVERY).await;
        assert!(health.storage_flaky("a", "connection refused".to_owned()));
        assert!(!health.storage_flaky("a", "connection refused".to_owned()));
        // Another cause during a flapping one's quiet minute is told at once.
        health.storage_ok("a");
        assert!(!health.storage_flaky("a", "503 SlowDown".to_owned()));
        assert!(health.bucket_missing("a", "NoSuchBucket".to_owned()));
    }

    /// A missing bucket answers every look "not found": such answers end no outage; only a
    /// listing that finds the bucket does.
    #[tokio::test]
    async fn a_missing_buckets_outage_ends_only_when_it_is_found() {
        let health = health();
        assert!(health.bucket_missing("a", "NoSuchBucket".to_owned()));
        assert!(
            !health.bucket_missing("a", "NoSuchBucket".to_owned()),
            "told once"
        );
        health.storage_ok("a");
        assert!(health.failing().is_some(), "a 404 ends nothing");
        health.bucket_found("a");
        assert_eq!(health.failing(), None);
    }

    /// When the last write waiting for room ends while the outbox's disk is still full, the log
    /// says submitting stays paused (it said "submitting resumed" with 0 B free); once the disk
    /// has room, it says resumed.
    #[test]
    fn the_last_blocked_write_ending_on_a_full_disk_does_not_say_resumed() {
        let health = Arc::new(health());
        health.set_disk_problem(Some("0 B free".to_owned()));
        let blocked = health.block_writes("No space left on device".to_owned(), None);
        let log = crate::logging::captured::logged(|| drop(blocked));
        assert!(
            log.contains("submitting stays paused") && log.contains("0 B free"),
            "{log}"
        );
        assert!(!log.contains("resumed"), "{log}");
        health.set_disk_problem(None);
        let blocked = health.block_writes("No space left on device".to_owned(), None);
        let log = crate::logging::captured::logged(|| drop(blocked));
        assert!(log.contains("submitting resumed"), "{log}");
    }

    /// The outbox's disk problem holds new submits back, keeps the instant it began while it
    /// lasts (so `run --once` can give up on it), and ends when the disk takes outputs again.
    #[tokio::test(start_paused = true)]
    async fn a_disk_problem_blocks_writes_and_keeps_its_start() {
        let health = health();
        assert_eq!(health.writes_blocked(), None);
        health.set_disk_problem(Some("full".to_owned()));
        tokio::time::advance(std::time::Duration::from_secs(30)).await;
        health.set_disk_problem(Some("still full".to_owned()));
        let (lasted, why) = health.disk_problem().expect("a problem");
        assert_eq!((lasted.as_secs(), why.as_str()), (30, "still full"));
        assert_eq!(
            health.writes_blocked(),
            Some(WriteBlock::Disk("still full".to_owned()))
        );
        health.set_disk_problem(None);
        assert_eq!(health.writes_blocked(), None);
    }
}
